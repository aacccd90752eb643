//! Calling CNI plugins the way libcni does (being written).
