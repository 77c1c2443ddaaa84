SELECT trials_closed_through FROM reaper_marks WHERE id = 1
