pub mod features;
pub mod log;
