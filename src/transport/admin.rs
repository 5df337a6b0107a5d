//! The admin socket: `DATA_DIR/admin.sock`, a Unix socket on which `roost admin` asks the running
//! server (`protocol-spec/admin.md`). Who may connect is decided by the file system — the data
//! directory is 0700 and the socket 0600 — and checked again on each connection: the peer's uid
//! (`SO_PEERCRED`) must own the data directory, or be root.
//!
//! One request per connection: a JSON line in, a JSON line out (a backup's files after it).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::{format_rfc3339, Clock, SystemClock};
use crate::protocol::admin::{
    decode_admin_request, AdminError, AdminRequest, AdminResponse, Backup, BackupFile,
    ADMIN_SOCKET_FILE, MAX_ADMIN_REQUEST_LEN,
};
use crate::services::admin::Admin;
use crate::store::DATABASE_FILE;

/// Admin connections served at once; more are told the server is busy.
const MAX_ADMIN_CONNECTIONS: usize = 8;
/// A request line must arrive within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A write to an admin client that does not move for this long ends its connection.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Prefix of the scratch directory a backup's database copy is made in (inside the data dir).
const BACKUP_SCRATCH_PREFIX: &str = "backup-in-progress-";

/// Binds the admin socket in `data_dir`, replacing one a dead server left (the caller holds the
/// database lock, so no live server owns it).
pub(crate) fn bind(data_dir: &Path) -> anyhow::Result<UnixListener> {
    remove_stale_backup_copies(data_dir);
    let path = data_dir.join(ADMIN_SOCKET_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => debug!("removed a stale admin socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    crate::secret_files::make_private(&path, 0o600)?;
    Ok(listener)
}

/// Removes the scratch copies of backups a server died during.
fn remove_stale_backup_copies(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(BACKUP_SCRATCH_PREFIX)
        {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    info!(scratch = %entry.path().display(), "removed the copy of an unfinished backup")
                }
                Err(e) => {
                    warn!(scratch = %entry.path().display(), "could not remove the copy of an unfinished backup: {e}")
                }
            }
        }
    }
}

/// Serves admin connections until `stop`, then removes the socket.
pub(crate) async fn serve(listener: UnixListener, admin: Arc<Admin>, stop: CancellationToken) {
    let owner = std::fs::metadata(admin.data_dir()).map(|m| m.uid()).ok();
    let permits = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let backups = Arc::new(tokio::sync::Mutex::new(()));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let admin = admin.clone();
                let backups = backups.clone();
                let permit = permits.clone().try_acquire_owned();
                connections.spawn(async move {
                    let mut stream = stream;
                    let Ok(_permit) = permit else {
                        let busy = AdminError::new("busy", "too many admin connections; try again");
                        let _ = write_error(&mut stream, busy).await;
                        return;
                    };
                    if let Err(e) = handle(stream, &admin, owner, &backups).await {
                        debug!("admin connection ended: {e:#}");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
    let _ = std::fs::remove_file(admin.data_dir().join(ADMIN_SOCKET_FILE));
}

async fn handle(
    mut stream: UnixStream,
    admin: &Admin,
    owner: Option<u32>,
    backups: &tokio::sync::Mutex<()>,
) -> anyhow::Result<()> {
    let uid = stream
        .peer_cred()
        .context("reading the peer's credentials")?
        .uid();
    if uid != 0 && Some(uid) != owner {
        warn!(uid, "an admin connection from another user was refused");
        let refusal = AdminError::new(
            "forbidden",
            "only the user that owns the data directory (or root) may administer the server",
        );
        return write_error(&mut stream, refusal).await;
    }
    let (reader, mut writer) = stream.split();
    // One byte more than the limit, to tell a line at the limit from a longer one.
    let mut reader = BufReader::new(reader).take(MAX_ADMIN_REQUEST_LEN as u64 + 1);
    let mut line = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let request = match read {
        Err(_) => Err(AdminError::new(
            "bad_request",
            "no request line within 10 s",
        )),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(_)) if !line.ends_with(b"\n") && line.len() > MAX_ADMIN_REQUEST_LEN => Err(
            AdminError::new("bad_request", "the request line is too long"),
        ),
        Ok(Ok(_)) => decode_admin_request(line.strip_suffix(b"\n").unwrap_or(&line)),
    };
    let request = match request {
        Ok(request) => request,
        Err(refusal) => return write_line(&mut writer, &failure(refusal)).await,
    };
    debug!(?request, "admin request");
    if request == AdminRequest::Backup {
        let _one_at_a_time = backups.lock().await;
        return stream_backup(&mut writer, admin).await;
    }
    let response = match admin.handle(request).await {
        Ok(result) => AdminResponse {
            ok: Some(result),
            error: None,
        },
        Err(refusal) => failure(refusal),
    };
    write_line(&mut writer, &response).await
}

fn failure(error: AdminError) -> AdminResponse {
    AdminResponse {
        ok: None,
        error: Some(error),
    }
}

async fn write_error(stream: &mut UnixStream, error: AdminError) -> anyhow::Result<()> {
    write_line(stream, &failure(error)).await
}

async fn write_line(
    writer: &mut (impl AsyncWriteExt + Unpin),
    response: &AdminResponse,
) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(response)?;
    line.push(b'\n');
    tokio::time::timeout(STALL_TIMEOUT, async {
        writer.write_all(&line).await?;
        writer.shutdown().await
    })
    .await
    .map_err(|_| anyhow::anyhow!("the admin client stopped reading"))??;
    Ok(())
}

/// Copies the database (one read transaction) into a scratch directory in the data dir, then
/// sends the answer line listing it and the data directory's key files, then their bytes. The
/// scratch copy is removed however the transfer ends.
async fn stream_backup(
    writer: &mut (impl AsyncWriteExt + Unpin),
    admin: &Admin,
) -> anyhow::Result<()> {
    let data_dir = admin.data_dir().to_owned();
    let scratch = data_dir.join(format!(
        "{BACKUP_SCRATCH_PREFIX}{}",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    crate::secret_files::create_private_dir(&scratch)?;
    let result = async {
        let taken_at = SystemClock.now();
        let copy = scratch.join(DATABASE_FILE);
        if let Err(e) = admin.services().store().backup_into(&copy).await {
            let refusal = AdminError::new("internal", format!("copying the database failed: {e}"));
            return write_line(writer, &failure(refusal)).await;
        }
        let mut files = vec![(DATABASE_FILE.to_owned(), copy)];
        files.extend(key_files(&data_dir)?);
        let mut listed = Vec::new();
        for (name, path) in &files {
            let bytes = tokio::fs::metadata(path).await?.len();
            listed.push(BackupFile {
                name: name.clone(),
                bytes,
            });
        }
        let header = AdminResponse {
            ok: Some(serde_json::to_value(Backup {
                taken_at: format_rfc3339(taken_at),
                files: listed.clone(),
            })?),
            error: None,
        };
        let mut line = serde_json::to_vec(&header)?;
        line.push(b'\n');
        writer.write_all(&line).await?;
        for ((_, path), file) in files.iter().zip(&listed) {
            // Exactly the announced length, even if a key file changed meanwhile.
            let mut source = tokio::fs::File::open(path).await?.take(file.bytes);
            let mut buffer = vec![0u8; 64 * 1024];
            let mut copied = 0;
            loop {
                let read = source.read(&mut buffer).await?;
                if read == 0 {
                    break;
                }
                // A reader that stops reading gives the backup up, rather than holding it.
                tokio::time::timeout(STALL_TIMEOUT, writer.write_all(&buffer[..read]))
                    .await
                    .map_err(|_| anyhow::anyhow!("the backup's reader stopped reading"))??;
                copied += read as u64;
            }
            anyhow::ensure!(
                copied == file.bytes,
                "{} shrank during the backup",
                file.name
            );
        }
        writer.shutdown().await?;
        info!(files = files.len(), "backup sent");
        Ok(())
    }
    .await;
    if let Err(e) = tokio::fs::remove_dir_all(&scratch).await {
        warn!(scratch = %scratch.display(), "could not remove a backup's scratch copy: {e}");
    }
    result
}

/// The data directory's files besides the database and the socket: keys, certificates, and the
/// files of its subdirectories (`credential-keys/`), as (name relative to the data dir, path).
fn key_files(data_dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(data_dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type()?;
        if name == DATABASE_FILE
            || name == ADMIN_SOCKET_FILE
            || name.starts_with(BACKUP_SCRATCH_PREFIX)
        {
            continue;
        }
        if kind.is_file() {
            files.push((name, entry.path()));
        } else if kind.is_dir() {
            let mut inner: Vec<_> = std::fs::read_dir(entry.path())?.collect::<Result<_, _>>()?;
            inner.sort_by_key(std::fs::DirEntry::file_name);
            for file in inner {
                if file.file_type()?.is_file() {
                    let inner_name = file.file_name().to_string_lossy().into_owned();
                    files.push((format!("{name}/{inner_name}"), file.path()));
                }
            }
        }
    }
    files.retain(|(name, _)| {
        let safe = BackupFile {
            name: name.clone(),
            bytes: 0,
        }
        .has_safe_name();
        if !safe {
            warn!(file = %name, "not backed up: its name is not a plain file name");
        }
        safe
    });
    Ok(files)
}
