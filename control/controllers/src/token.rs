//! Service-account tokens: the controller-manager signs them with `xkube_api::satoken` (the
//! format, the key file and verification are shared with the apiserver there).

use std::path::{Path, PathBuf};

use xkube_api::satoken::KEY_FILE;

/// Path of the signing key under `data_dir`.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}
