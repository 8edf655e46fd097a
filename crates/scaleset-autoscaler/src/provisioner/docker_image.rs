//! Local runner images (cargo feature `docker`): an image built `FROM scratch` out of files
//! of this host, through the engine's build API, so no registry is needed.
//!
//! Each executable goes in at its host path together with the shared libraries `ldd` names
//! for it (at their host paths too: the dynamic loader and libc included); other files go in
//! as they are (a CA bundle, a config file); `/tmp` is created with mode 1777. Symbolic links
//! are followed, so the image holds the files themselves, as plain entries (a sparse file,
//! such as a freshly linked executable, too: Docker refuses GNU sparse entries). The build context is a tar made in
//! memory and sent to the engine; nothing is written to disk.
//!
//! `scaleset demo --provisioner docker` builds its runner image this way (the `scaleset`
//! executable running `scaleset sim-runner`), and so do the Docker tests.
//!
//! ```no_run
//! # async fn f() -> Result<(), scaleset_autoscaler::ProvisionError> {
//! use std::path::PathBuf;
//! use scaleset_autoscaler::provisioner::docker;
//! use scaleset_autoscaler::provisioner::docker_image::{LocalImage, build_local_image};
//!
//! let docker = docker::connect_engine().await?;
//! let mut image = LocalImage::new("my-runner:1");
//! image.executables.push(PathBuf::from("/usr/local/bin/my-runner"));
//! image.files.push(PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
//! build_local_image(&docker, &image).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures::StreamExt;

use crate::error::ProvisionError;

const BACKEND: &str = "docker";

/// The usual CA bundle of Debian-like hosts, for images whose programs speak TLS.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What goes into a local image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalImage {
    /// The tag the image gets (`name:version`).
    pub tag: String,
    /// Executables of this host, each copied at its path with the libraries `ldd` names.
    pub executables: Vec<PathBuf>,
    /// Other files of this host, each copied at its path.
    pub files: Vec<PathBuf>,
    /// Labels of the image (a `LABEL` line of the generated Dockerfile).
    pub labels: BTreeMap<String, String>,
}

impl LocalImage {
    /// An image tagged `tag` holding nothing yet.
    pub fn new(tag: impl Into<String>) -> LocalImage {
        LocalImage {
            tag: tag.into(),
            ..LocalImage::default()
        }
    }
}

fn error(message: String) -> ProvisionError {
    ProvisionError::backend(BACKEND, message)
}

/// The shared libraries `ldd` names for `exe`, absolute paths in `ldd`'s order (none for a
/// static executable).
///
/// # Errors
/// [`ProvisionError::Backend`] when `ldd` cannot be run.
pub fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>, ProvisionError> {
    let out = std::process::Command::new("ldd")
        .arg(exe)
        .output()
        .map_err(|e| error(format!("running ldd {}: {e}", exe.display())))?;
    // `ldd` fails on a static executable ("not a dynamic executable"): no libraries.
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// The absolute paths in `ldd` output (`libc.so.6 => /lib/.../libc.so.6 (0x...)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; `linux-vdso.so.1 (0x...)` has none).
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The generated Dockerfile of `image`.
fn dockerfile(image: &LocalImage) -> String {
    let mut text = String::from("FROM scratch\nCOPY rootfs/ /\n");
    for (k, v) in &image.labels {
        // JSON string quoting is valid Dockerfile quoting for LABEL.
        let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
        text.push_str(&format!("LABEL {}={}\n", quote(k), quote(v)));
    }
    text
}

/// The build context (a tar) of `image`: a Dockerfile and a `rootfs/` holding every file at
/// its host path. Reads the files, so call it off the async workers.
///
/// # Errors
/// [`ProvisionError::Backend`] naming a file that cannot be read or a path that is not
/// absolute.
pub fn build_context(image: &LocalImage) -> Result<Vec<u8>, ProvisionError> {
    let mut paths: BTreeSet<PathBuf> = BTreeSet::new();
    for exe in &image.executables {
        paths.insert(exe.clone());
        paths.extend(shared_libraries(exe)?);
    }
    paths.extend(image.files.iter().cloned());
    let mut tar = tar::Builder::new(Vec::new());
    let dockerfile = dockerfile(image);
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())
        .map_err(|e| error(format!("adding the Dockerfile: {e}")))?;
    let mut tmp = tar::Header::new_gnu();
    tmp.set_entry_type(tar::EntryType::Directory);
    tmp.set_mode(0o1777);
    tmp.set_size(0);
    tmp.set_cksum();
    tar.append_data(&mut tmp, "rootfs/tmp/", std::io::empty())
        .map_err(|e| error(format!("adding /tmp: {e}")))?;
    for path in &paths {
        let rel = path
            .strip_prefix("/")
            .map_err(|_| error(format!("{} is not an absolute path", path.display())))?;
        append_file(&mut tar, path, &Path::new("rootfs").join(rel))
            .map_err(|e| error(format!("adding {}: {e}", path.display())))?;
    }
    tar.into_inner()
        .map_err(|e| error(format!("finishing the build context: {e}")))
}

/// Appends the file at `path` (symbolic links followed) as a plain file entry `name`, with
/// its mode. Never a GNU sparse entry (what the tar crate writes for a sparse file, such as
/// a freshly linked executable): Docker's build refuses those ("unhandled tar header type
/// 83").
fn append_file(tar: &mut tar::Builder<Vec<u8>>, path: &Path, name: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(meta.len());
    header.set_cksum();
    tar.append_data(&mut header, name, file)
}

/// Builds `image` on the engine `docker` and tags it [`LocalImage::tag`], replacing an image
/// of that tag. Returns once the engine has the image.
///
/// # Errors
/// [`ProvisionError::Backend`] naming the tag, with the engine's message, when a file cannot
/// be read or the engine refuses the build.
pub async fn build_local_image(docker: &Docker, image: &LocalImage) -> Result<(), ProvisionError> {
    let tag = image.tag.clone();
    let spec = image.clone();
    let context = tokio::task::spawn_blocking(move || build_context(&spec))
        .await
        .map_err(|e| {
            error(format!(
                "building image {tag}: the context task failed: {e}"
            ))
        })??;
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| error(format!("building image {tag}: {e}")))?;
        if let Some(detail) = info.error_detail {
            return Err(error(format!(
                "building image {tag}: {}",
                detail.message.unwrap_or_default()
            )));
        }
    }
    docker
        .inspect_image(&tag)
        .await
        .map(|_| ())
        .map_err(|e| error(format!("the built image {tag} is missing: {e}")))
}

/// What [`ensure_local_image`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// An image of that tag with every wanted label was there already.
    Reused,
    /// The image was built.
    Built,
}

/// Reuses the image tagged [`LocalImage::tag`] when it carries every label of `image` with
/// the same value (put a fingerprint of the files in a label to rebuild when they change),
/// else builds it with [`build_local_image`].
///
/// # Errors
/// As [`build_local_image`]; an engine error looking for the image other than "not found".
pub async fn ensure_local_image(
    docker: &Docker,
    image: &LocalImage,
) -> Result<Ensured, ProvisionError> {
    match docker.inspect_image(&image.tag).await {
        Ok(found) => {
            let have = found.config.and_then(|c| c.labels).unwrap_or_default();
            if image.labels.iter().all(|(k, v)| have.get(k) == Some(v)) {
                return Ok(Ensured::Reused);
            }
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => {
            return Err(error(format!("looking for image {}: {e}", image.tag)));
        }
    }
    build_local_image(docker, image).await?;
    Ok(Ensured::Built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\
                    \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn labels_are_quoted_in_the_dockerfile() {
        let mut image = LocalImage::new("t:1");
        image.labels.insert("a.b".into(), "x \"y\"".into());
        assert_eq!(
            dockerfile(&image),
            "FROM scratch\nCOPY rootfs/ /\nLABEL \"a.b\"=\"x \\\"y\\\"\"\n"
        );
    }

    #[test]
    fn the_context_holds_the_dockerfile_tmp_and_the_files() {
        let dir = std::env::temp_dir().join(format!("scaleset-ctx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("hello.txt");
        std::fs::write(&file, "hi").expect("file");
        let mut image = LocalImage::new("t:1");
        image.files.push(file.clone());
        let tar = build_context(&image).expect("context");
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        let rel = file.strip_prefix("/").expect("absolute").display();
        assert_eq!(
            names,
            vec![
                "Dockerfile".to_string(),
                "rootfs/tmp/".to_string(),
                format!("rootfs/{rel}"),
            ]
        );
        // A sparse file goes in as a plain entry with its full contents.
        let sparse = dir.join("sparse.bin");
        let f = std::fs::File::create(&sparse).expect("sparse file");
        f.set_len(1 << 20).expect("a hole");
        drop(f);
        image.files = vec![sparse.clone()];
        let tar = build_context(&image).expect("context");
        let mut archive = tar::Archive::new(&tar[..]);
        let last = archive
            .entries()
            .expect("entries")
            .last()
            .expect("an entry")
            .expect("readable");
        assert_eq!(last.header().entry_type(), tar::EntryType::Regular);
        assert_eq!(last.header().size().expect("size"), 1 << 20);
        image.files = vec![PathBuf::from("relative.txt")];
        assert!(build_context(&image).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
