SELECT model, batch_size, precision, device, jobs, images, seconds, images_per_second
  FROM measured_throughput ORDER BY model, batch_size, precision, device
