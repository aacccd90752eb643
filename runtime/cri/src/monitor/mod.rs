//! The per-container monitor (being written).
