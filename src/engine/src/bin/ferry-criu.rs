//! Development shim: ferry's criu face as its own binary, so this crate's tests can run it.
//! The product binary exposes the same code as `ferry criu` and as argv[0] `criu`.

fn main() {
    std::process::exit(ferry_engine::criu::main_with_args(
        std::env::args_os().collect(),
    ));
}
