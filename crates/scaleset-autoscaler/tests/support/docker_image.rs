//! Test images built locally `FROM scratch` out of host files, through the product's
//! [`scaleset_autoscaler::provisioner::docker_image`] (no registry is needed). Reusable for
//! any set of host files (the CLI's end-to-end test builds one holding the `scaleset`
//! binary).
#![allow(dead_code)]

use std::path::Path;

use bollard::Docker;
use scaleset_autoscaler::provisioner::docker_image::{self, LocalImage};

/// The host's CA bundle, for images whose programs speak TLS.
pub const CA_BUNDLE: &str = docker_image::CA_BUNDLE;

/// Builds the image `tag` holding `executables` (with their libraries) and `files`, each at
/// its host path.
pub async fn build_image(
    docker: &Docker,
    tag: &str,
    executables: &[&Path],
    files: &[&Path],
) -> Result<(), String> {
    let mut image = LocalImage::new(tag);
    image.executables = executables.iter().map(|p| p.to_path_buf()).collect();
    image.files = files.iter().map(|p| p.to_path_buf()).collect();
    docker_image::build_local_image(docker, &image)
        .await
        .map_err(|e| e.to_string())
}
