//! `inspect --doctor`: what a payload needs from a host.

use std::process::Command;

use e2e::bundle_format::Codec;
use e2e::*;

#[test]
fn the_sydney_bundle_is_clean_for_scratch() {
    let sandbox = Sandbox::new();
    let bundle = sandbox.sydney_bundle();
    run(sandbox.command(&bundle).args(["inspect", "--doctor"]))
        .expect_success()
        .expect_stdout("bin/sydney: ELF, static")
        .expect_stdout("FROM scratch: ok, needs nothing from the host")
        .expect_stdout("alpine (musl): ok, needs nothing from the host")
        .expect_stdout("glibc hosts: ok, needs nothing from the host");
}

#[test]
fn a_dynamic_program_and_a_shell_script_are_diagnosed() {
    require_program("g++", "g++");
    let sandbox = Sandbox::new();
    let release = sandbox.join("release");
    std::fs::create_dir_all(release.join("bin")).unwrap();
    let source = sandbox.join("hello.cpp");
    std::fs::write(
        &source,
        "#include <iostream>\n#include <cmath>\nint main() { std::cout << std::sqrt(2.0) << std::endl; }\n",
    )
    .unwrap();
    run(Command::new("g++")
        .arg(&source)
        .arg("-o")
        .arg(release.join("bin/hello")))
    .expect_success();
    write_exec(
        &release.join("bin/start"),
        "#!/bin/sh\nexec \"$(dirname \"$0\")/hello\"\n",
    );
    let bundle = sandbox.join("dynamic");
    pack(
        &release,
        &pack_options("dynamic", "bin/start", Codec::Gzip),
        &bundle,
    );

    let ran = run(sandbox.command(&bundle).args(["inspect", "--doctor"]));
    ran.expect_success()
        .expect_stdout("bin/hello: ELF, dynamic, loader /lib64/ld-linux-x86-64.so.2")
        .expect_stdout("needs libstdc++.so.6")
        .expect_stdout("requires GLIBC_2.")
        .expect_stdout("bin/start: script, #!/bin/sh")
        .expect_stdout("FROM scratch: needs /bin/sh (for bin/start); the loader /lib64/ld-linux-x86-64.so.2; libraries ")
        .expect_stdout("alpine (musl): needs glibc-linked programs (bin/hello)")
        .expect_stdout("libstdc++.so.6 (apk add their packages)")
        .expect_stdout("glibc hosts: needs glibc >= 2.");
    // And it really runs here, where all of that exists.
    run(sandbox.command(&bundle).arg("start"))
        .expect_success()
        .expect_stdout("1.41421");
}
