//! lth coordinator (being written).
