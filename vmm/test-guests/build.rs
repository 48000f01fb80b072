//! Links the guest at 0x100000 with `link.ld`, as a fixed-address (non-PIE) executable.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    if target == "x86_64-unknown-none" {
        // x86_64-unknown-none links static-pie by default; the VMM loads the image at
        // its link address and applies no relocations, so link a plain static
        // executable: absolute addresses in data (IDT stub tables) are then resolved.
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
        println!("cargo:rustc-link-arg-bins=--build-id=none");
    }
}
