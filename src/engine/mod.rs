//! The promote and rollback engine.

pub mod live;
