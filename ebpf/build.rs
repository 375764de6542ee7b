//! Fails early, with a clear message, when bpf-linker is missing; and rebuilds the object
//! when bpf-linker changes.
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => panic!(
            "bpf-linker not found ({e}); install it with: PATH=/usr/lib/llvm-22/bin:$PATH \
             cargo install bpf-linker --locked --no-default-features --features llvm-22 \
             (or run `cargo xtask setup`)"
        ),
    }
}
