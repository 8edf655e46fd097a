//! Test images built locally `FROM scratch` out of host files: no registry is needed. Each
//! executable goes in at its host path with the shared libraries `ldd` names (at their
//! paths too), other files as they are; `/tmp` is created (mode 1777). Reusable for any
//! set of host files (the CLI's end-to-end test builds one holding the `scaleset` binary).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures::StreamExt;

/// The host's CA bundle, for images whose programs speak TLS.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The shared libraries `ldd` names for `exe` (none for a static one).
pub fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>, String> {
    let out = std::process::Command::new("ldd")
        .arg(exe)
        .output()
        .map_err(|e| format!("running ldd {}: {e}", exe.display()))?;
    // `ldd` fails on a static executable ("not a dynamic executable"): no libraries.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// The build context (a tar) of an image holding `executables` (with their libraries) and
/// `files`, each at its host path.
pub fn build_context(executables: &[&Path], files: &[&Path]) -> Result<Vec<u8>, String> {
    let mut paths: BTreeSet<PathBuf> = BTreeSet::new();
    for exe in executables {
        paths.insert(exe.to_path_buf());
        paths.extend(shared_libraries(exe)?);
    }
    paths.extend(files.iter().map(|f| f.to_path_buf()));
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(true);
    let dockerfile = b"FROM scratch\nCOPY rootfs/ /\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", &dockerfile[..])
        .map_err(|e| format!("adding the Dockerfile: {e}"))?;
    let mut tmp = tar::Header::new_gnu();
    tmp.set_entry_type(tar::EntryType::Directory);
    tmp.set_mode(0o1777);
    tmp.set_size(0);
    tmp.set_cksum();
    tar.append_data(&mut tmp, "rootfs/tmp/", std::io::empty())
        .map_err(|e| format!("adding /tmp: {e}"))?;
    for path in &paths {
        let rel = path
            .strip_prefix("/")
            .map_err(|_| format!("{} is not an absolute path", path.display()))?;
        tar.append_path_with_name(path, Path::new("rootfs").join(rel))
            .map_err(|e| format!("adding {}: {e}", path.display()))?;
    }
    tar.into_inner()
        .map_err(|e| format!("finishing the build context: {e}"))
}

/// Builds the image `tag` holding `executables` (with their libraries) and `files`.
pub async fn build_image(
    docker: &Docker,
    tag: &str,
    executables: &[&Path],
    files: &[&Path],
) -> Result<(), String> {
    let context = build_context(executables, files)?;
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| format!("building image {tag}: {e}"))?;
        if let Some(detail) = info.error_detail {
            return Err(format!(
                "building image {tag}: {}",
                detail.message.unwrap_or_default()
            ));
        }
    }
    docker
        .inspect_image(tag)
        .await
        .map(|_| ())
        .map_err(|e| format!("the built image {tag} is missing: {e}"))
}
