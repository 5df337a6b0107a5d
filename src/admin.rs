//! The operator's side of the admin socket: finds the server running on a data directory and asks
//! it (`roost admin`, and the tests). See `protocol-spec/admin.md`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::protocol::admin::{
    AdminError, AdminRequest, AdminResponse, Backup, ADMIN_SOCKET_FILE, MAX_ADMIN_RESPONSE_LEN,
};

/// How the server answered: a refusal it explained, or a failure to reach or understand it.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error(transparent)]
    Refused(#[from] AdminError),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// The admin socket of the server running on one data directory.
pub struct AdminClient {
    socket: PathBuf,
    data_dir: PathBuf,
}

impl AdminClient {
    /// The server on `data_dir`: the directory must be Roost's and hold the socket of a server.
    pub fn for_data_dir(data_dir: &Path) -> anyhow::Result<Self> {
        crate::server::require_data_dir(data_dir)?;
        let socket = data_dir.join(ADMIN_SOCKET_FILE);
        if !socket.exists() {
            bail!(
                "no server is running on {} (no {ADMIN_SOCKET_FILE} in it): start one with \
                 `roost serve --data-dir {}`",
                data_dir.display(),
                data_dir.display()
            );
        }
        Ok(Self {
            socket,
            data_dir: data_dir.to_owned(),
        })
    }

    async fn connect(&self) -> anyhow::Result<UnixStream> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
                    "no server is running on {} (its admin socket is left from one that stopped)",
                    self.data_dir.display()
                ),
                std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                    "permission denied on {}: run as the user the server runs as",
                    self.socket.display()
                ),
                _ => anyhow::Error::new(e)
                    .context(format!("connecting to {}", self.socket.display())),
            })
    }

    /// Sends `request` and reads the answer line; the reader is left after it.
    async fn exchange(
        &self,
        request: &AdminRequest,
    ) -> Result<(serde_json::Value, BufReader<UnixStream>), AdminClientError> {
        let mut stream = self.connect().await?;
        let mut line = serde_json::to_vec(request).context("encoding the request")?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .await
            .context("sending the request")?;
        let mut reader = BufReader::new(stream);
        let mut answer = Vec::new();
        (&mut reader)
            .take(MAX_ADMIN_RESPONSE_LEN as u64)
            .read_until(b'\n', &mut answer)
            .await
            .context("reading the answer")?;
        if answer.is_empty() {
            return Err(anyhow::anyhow!(
                "the server closed the admin connection without answering"
            )
            .into());
        }
        let response: AdminResponse = serde_json::from_slice(&answer)
            .context("the server's answer is not an admin response")?;
        match (response.ok, response.error) {
            (_, Some(error)) => Err(AdminClientError::Refused(error)),
            (Some(ok), None) => Ok((ok, reader)),
            (None, None) => Err(anyhow::anyhow!(
                "the server's answer holds neither a result nor an error"
            )
            .into()),
        }
    }

    /// Sends `request` and decodes its result as `T`.
    pub async fn request<T: DeserializeOwned>(
        &self,
        request: &AdminRequest,
    ) -> Result<T, AdminClientError> {
        let (value, _) = self.exchange(request).await?;
        Ok(serde_json::from_value(value).context("the server's result has an unexpected shape")?)
    }

    /// Takes a backup into the new directory `target` (which must not exist, or be empty):
    /// the database as of one moment and the data directory's keys, ready for `roost serve
    /// --data-dir TARGET`. Files are written 0600 and synced; on failure `target` is removed.
    pub async fn backup(&self, target: &Path) -> Result<Backup, AdminClientError> {
        if target.exists()
            && std::fs::read_dir(target)
                .map(|mut entries| entries.next().is_some())
                .unwrap_or(true)
        {
            return Err(anyhow::anyhow!(
                "{} exists and is not an empty directory: a backup goes into a new directory",
                target.display()
            )
            .into());
        }
        let (value, mut reader) = self.exchange(&AdminRequest::Backup).await?;
        let backup: Backup =
            serde_json::from_value(value).context("the server's backup listing is malformed")?;
        let written = receive_files(&backup, &mut reader, target).await;
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(target);
            return Err(e.into());
        }
        Ok(backup)
    }
}

async fn receive_files(
    backup: &Backup,
    reader: &mut BufReader<UnixStream>,
    target: &Path,
) -> anyhow::Result<()> {
    crate::secret_files::create_private_dir(target)?;
    for file in &backup.files {
        if !file.has_safe_name() {
            bail!(
                "the server listed a file with an unsafe name: {:?}",
                file.name
            );
        }
        let path = target.join(&file.name);
        if let Some(parent) = path.parent() {
            crate::secret_files::create_private_dir(parent)?;
        }
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true).mode(0o600);
        let mut out = options
            .open(&path)
            .await
            .with_context(|| format!("creating {}", path.display()))?;
        let copied = tokio::io::copy(&mut (&mut *reader).take(file.bytes), &mut out).await?;
        if copied != file.bytes {
            bail!(
                "the backup ended early: {} has {copied} of {} bytes",
                file.name,
                file.bytes
            );
        }
        out.sync_all().await?;
    }
    // The directory entries too, so that the files survive a crash right after.
    for dir in [target.to_owned(), target.join("credential-keys")] {
        if dir.is_dir() {
            std::fs::File::open(&dir)?.sync_all()?;
        }
    }
    Ok(())
}
