//! keelson's gRPC interfaces (being written).
