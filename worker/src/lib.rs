pub fn version() -> String { format!("{:?}", tch::Tensor::from_slice(&[1f32,2.]).sum(tch::Kind::Float)) }
