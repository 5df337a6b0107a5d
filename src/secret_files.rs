//! Files and directories that hold private keys: created readable by their owner only, never
//! readable by others, not even for a moment.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Writes `contents` to a new or truncated file with mode 0600, and syncs it to disk.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    write_with(options, path, contents)
}

/// Writes `contents` to a file that must not exist yet (mode 0600). Fails if it exists, so two
/// writers can never overwrite each other's key.
pub fn create_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    write_with(options, path, contents)
}

fn write_with(mut options: fs::OpenOptions, path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Creates a directory (and its parents) with mode 0700, or makes an existing one private.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating directory {}", dir.display()))?;
    // An existing directory keeps the mode it was made with: ours are private whoever made them.
    make_private(dir, 0o700)
}

/// Restricts an existing file or directory to its owner (`mode`: 0600 or 0700).
pub fn make_private(path: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}
