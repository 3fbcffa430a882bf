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
    let crt_static =
        target.ends_with("-musl") || target_features.split(',').any(|f| f == "crt-static");
    if target.contains("linux") && !crt_static {
        vec!["-no-pie", "-Wl,-z,lazy"]
    } else {
        Vec::new()
    }
}
