//! The CRI container log format (being written).
