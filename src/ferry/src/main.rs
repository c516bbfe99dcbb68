//! ferry: a runc-compatible OCI runtime with its own checkpoint/restore engine.

fn main() {
    println!("ferry");
}
