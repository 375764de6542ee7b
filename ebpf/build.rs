//! Fails early, with a clear message, when bpf-linker is missing; rebuilds the object when
//! bpf-linker changes; and has the linker export the global functions the verifier checks
//! once for all callers (bpf-linker makes every other symbol internal).
use which::which;

fn main() {
    println!("cargo:rustc-link-arg=--export=egressd_table6_lookup_a");
    println!("cargo:rustc-link-arg=--export=egressd_table6_lookup_b");
    println!("cargo:rustc-link-arg=--export=egressd_lookup_a");
    println!("cargo:rustc-link-arg=--export=egressd_lookup_b");
    println!("cargo:rustc-link-arg=--export=egressd_skb_parse");
    println!("cargo:rustc-link-arg=--export=egressd_skb_judge");
    println!("cargo:rustc-link-arg=--export=egressd_skb_memo");
    println!("cargo:rustc-link-arg=--export=egressd_skb_cached");
    println!("cargo:rustc-link-arg=--export=egressd_forced_check");
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => panic!(
            "bpf-linker not found ({e}); install it with: PATH=/usr/lib/llvm-22/bin:$PATH \
             cargo install bpf-linker --locked --no-default-features --features llvm-22 \
             (or run `cargo xtask setup`)"
        ),
    }
}
