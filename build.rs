//! Stamps the version that `fwdgate --version` prints with the git commit the binary was
//! built from: `0.1.0 (commit 1a2b3c4d5e6f)`, or the bare package version where there is
//! no git checkout (a source tarball, `cargo install` of a published crate). The
//! environment variable FWDGATE_GIT_COMMIT, when set, is taken instead of asking git
//! (for builds whose context has no `.git`, like a container build).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FWDGATE_GIT_COMMIT");
    let commit = std::env::var("FWDGATE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    // Build again when HEAD moves: HEAD itself (a checkout), the branch it names (a
    // commit) and packed-refs (where git may keep that branch). Only files that exist:
    // cargo reruns a build script on every build when a watched path is missing.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    let package = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let version = match commit {
        Some(commit) => format!("{package} (commit {commit})"),
        None => package,
    };
    println!("cargo:rustc-env=FWDGATE_VERSION={version}");
}
