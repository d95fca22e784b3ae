//! The hand-written V4L2 ABI (`src/source/v4l2_abi.rs`) against the kernel's own headers:
//! every struct size, field offset, constant and ioctl number is compiled as a C
//! `_Static_assert` with the system C compiler and `<linux/videodev2.h>`, for x86-64 and,
//! where Debian's cross compiler and arm64 headers are installed (`cross/toolchain.sh`, run
//! by CI), for aarch64. A wrong number fails to compile and names itself.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;

use maeday_edge::daemon::source::v4l2_abi::LAYOUT;

fn c_source() -> String {
    let mut src =
        String::from("#include <stddef.h>\n#include <sys/time.h>\n#include <linux/videodev2.h>\n");
    for (expr, value) in LAYOUT {
        src.push_str(&format!(
            "_Static_assert((unsigned long)({expr}) == {value}UL, \"{expr} is not {value}\");\n"
        ));
    }
    src
}

/// Compile the asserts with `cc`; None when that compiler or its headers are missing.
fn check_with(cc: &str, header: &Path) -> Option<Result<(), String>> {
    if !header.is_file() || Command::new(cc).arg("--version").output().is_err() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("abi.c");
    std::fs::write(&file, c_source()).unwrap();
    let out = Command::new(cc)
        .args(["-fsyntax-only", "-std=gnu11"])
        .arg(&file)
        .output()
        .unwrap();
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

#[test]
fn layouts_and_ioctl_numbers_match_the_kernel_headers() {
    assert!(LAYOUT.len() > 40, "the table covers every struct and ioctl");
    let targets = [
        ("cc", "/usr/include/linux/videodev2.h", "x86-64 (host)"),
        (
            "aarch64-linux-gnu-gcc",
            "/usr/aarch64-linux-gnu/include/linux/videodev2.h",
            "aarch64",
        ),
    ];
    let mut checked = Vec::new();
    for (cc, header, name) in targets {
        match check_with(cc, Path::new(header)) {
            Some(Ok(())) => checked.push(name),
            Some(Err(e)) => panic!("{name}: the V4L2 ABI differs from {header}:\n{e}"),
            None => eprintln!("SKIPPED {name}: {cc} or {header} is not installed"),
        }
    }
    // The host check must run wherever the tests run on Linux with a C toolchain (CI has
    // one: cargo needs a linker); only the cross check may be absent.
    if Path::new("/usr/include/linux/videodev2.h").is_file() {
        assert!(checked.contains(&"x86-64 (host)") || !cfg!(target_arch = "x86_64"));
    }
    if std::env::var_os("MAEDAY_EXPECT_ARM64_HEADERS").is_some() {
        assert!(checked.contains(&"aarch64"), "the arm64 check was skipped");
    }
    eprintln!("V4L2 ABI checked against the headers of: {checked:?}");
}

#[test]
fn a_wrong_number_is_caught() {
    // The check itself can fail: a deliberately wrong size is refused by the compiler.
    let Some(_) = check_with("cc", Path::new("/usr/include/linux/videodev2.h")) else {
        eprintln!("SKIPPED: no cc or kernel headers");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrong.c");
    std::fs::write(
        &file,
        "#include <sys/time.h>\n#include <linux/videodev2.h>\n_Static_assert(sizeof(struct v4l2_buffer) == 84, \"x\");\n",
    )
    .unwrap();
    let out = Command::new("cc")
        .args(["-fsyntax-only", "-std=gnu11"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wrong v4l2_buffer size compiled");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("static assert"), "{stderr}");
}
