fn main() { println!("{}", lth_worker::version()); }
