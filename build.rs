//! Links the dlock executable as non-PIE: a PIE start-up spends about 0.3 ms
//! writing 18,000 relocations (pointers in the tables of every linked crate),
//! and dlock is started once per locked job. Objects stay position
//! independent, so this changes only how the final executable is linked.
//! And with lazy binding (`-z lazy`, Debian's default for C programs): the
//! dynamic loader then looks up only the libc functions a run calls, not all
//! ~200 at start (0.15 ms of an `exec -- true` that takes 2.5 ms; docs/build.md).
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    for arg in link_args(&target, &features) {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    if static_unwinder(&target, &features) && c_compiler_has("libgcc_eh.a") {
        // Not bundled into the rlib: passed to every final link, ahead of
        // std's `-lgcc_s`, which `--as-needed` then leaves out.
        println!("cargo:rustc-link-lib=static:-bundle,+verbatim=libgcc_eh.a");
    }
    // `all_backends`: every backend feature is on. That build lints for dead
    // code and has the tests that need every backend (README recipes, say).
    println!("cargo::rustc-check-cfg=cfg(all_backends)");
    let features = [
        "SQLITE",
        "REDIS",
        "REDIS_TLS",
        "MYSQL",
        "POSTGRES",
        "ETCD",
        "ZOOKEEPER",
    ];
    if features
        .iter()
        .all(|f| std::env::var_os(format!("CARGO_FEATURE_{f}")).is_some())
    {
        println!("cargo:rustc-cfg=all_backends");
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// The extra linker arguments for the dlock executable. A static build
/// (`crt-static`: musl by default, or glibc on request) links as static PIE,
/// which applies its own relocations at start; `-no-pie` on top of that makes
/// an executable that crashes before `main`, so it is left alone there.
/// Cargo lists crt-static in CARGO_CFG_TARGET_FEATURE only when RUSTFLAGS
/// turn it on, not where it is the target's default (musl): a musl target
/// counts as static by itself.
pub fn link_args(target: &str, target_features: &str) -> Vec<&'static str> {
    if target.contains("linux") && !crt_static(target, target_features) {
        vec!["-no-pie", "-Wl,-z,lazy"]
    } else {
        Vec::new()
    }
}

fn crt_static(target: &str, target_features: &str) -> bool {
    target.ends_with("-musl") || target_features.split(',').any(|f| f == "crt-static")
}

/// Whether to link GCC's unwinder (`libgcc_eh.a`) into the executable rather
/// than load `libgcc_s.so.1` at start: that library's constructor probes the
/// CPU with about ten CPUID instructions, and on a virtual machine each one
/// traps to the hypervisor (7 µs apiece on the 2-core test VM), about 0.1 ms
/// of every run (docs/build.md). A static build links it statically anyway.
pub fn static_unwinder(target: &str, target_features: &str) -> bool {
    target.contains("linux-gnu") && !crt_static(target, target_features)
}

/// Whether the C compiler that links the executable has library `file`: it
/// prints the file's full path when it has, and the bare name when not.
pub fn c_compiler_has(file: &str) -> bool {
    let cc = std::env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".into());
    std::process::Command::new(cc)
        .arg(format!("-print-file-name={file}"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .is_some_and(|p| std::path::Path::new(p.trim()).is_absolute())
}
