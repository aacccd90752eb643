pub mod features;
pub mod log;
pub mod tty;
