//! Freezing a tree: seize every task and thread until no new one appears.
