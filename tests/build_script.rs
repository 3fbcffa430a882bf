//! The linker arguments build.rs gives the executable, per target.

#[allow(dead_code)] // its `main` is cargo's entry point, not called here
#[path = "../build.rs"]
mod build_rs;

use build_rs::{c_compiler_has, link_args, static_unwinder};

#[test]
fn a_dynamic_linux_build_links_without_pie() {
    assert_eq!(
        link_args("x86_64-unknown-linux-gnu", "fxsr,sse,sse2"),
        ["-no-pie", "-Wl,-z,lazy"]
    );
}

#[test]
fn a_static_build_keeps_its_static_pie_start_up() {
    // With crt-static, rustc links a static PIE; adding -no-pie made a
    // binary that died with SIGSEGV before main (seen with glibc crt-static).
    for target in ["x86_64-unknown-linux-gnu", "x86_64-unknown-linux-musl"] {
        assert!(
            link_args(target, "crt-static,fxsr,sse,sse2").is_empty(),
            "{target}"
        );
    }
}

#[test]
fn a_musl_build_is_static_without_saying_so() {
    // Cargo leaves crt-static out of CARGO_CFG_TARGET_FEATURE where it is the
    // target's default; with -no-pie the musl binary died before main.
    assert!(link_args("x86_64-unknown-linux-musl", "fxsr,sse,sse2").is_empty());
}

#[test]
fn other_systems_get_no_extra_arguments() {
    assert!(link_args("aarch64-apple-darwin", "neon").is_empty());
}

#[test]
fn only_a_dynamic_glibc_build_links_the_unwinder_statically() {
    assert!(static_unwinder("x86_64-unknown-linux-gnu", "fxsr,sse,sse2"));
    assert!(static_unwinder("aarch64-unknown-linux-gnu", "neon"));
    // Static builds bring their own unwinder; other systems have no libgcc_eh.
    assert!(!static_unwinder(
        "x86_64-unknown-linux-gnu",
        "crt-static,sse2"
    ));
    assert!(!static_unwinder(
        "x86_64-unknown-linux-musl",
        "fxsr,sse,sse2"
    ));
    assert!(!static_unwinder("aarch64-apple-darwin", "neon"));
}

#[test]
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(target_feature = "crt-static")
))]
fn the_executable_does_not_load_libgcc_s() {
    if !c_compiler_has("libgcc_eh.a") {
        return; // then build.rs keeps the shared unwinder
    }
    let out = std::process::Command::new("readelf")
        .args(["-dW", env!("CARGO_BIN_EXE_dlock")])
        .output()
        .expect("readelf (binutils) runs");
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(dynamic.contains("libc.so"), "{dynamic}");
    assert!(!dynamic.contains("libgcc_s"), "{dynamic}");
}
