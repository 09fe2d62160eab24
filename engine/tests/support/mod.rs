pub mod program;
pub mod trace;
