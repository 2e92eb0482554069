//! `wasi:filesystem/types` as a step sees it: wasmtime-wasi's own
//! implementation, with every operation that can grow the step's `/tmp` or
//! take a host descriptor metered first.
//!
//! The quota is enforced here, in the host's filesystem layer, before the
//! operation runs: a write that would pass it fails with `insufficient-space`
//! (ENOSPC, what a full disk gives) and never reaches the disk, so no step can
//! exceed its quota between two checks. Bytes are counted by how far writes
//! and `set-size` extend a file (its logical size, a little more than tmpfs
//! stores for sparse files), entries by the names created; both are freed
//! when the last name of a file is gone and the last handle to it closed.
//!
//! The accounting is in [`Meter`]; this module only sees that every path in
//! gets asked and every path out gets reported.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bytes::Bytes;
use cap_primitives::fs::{FollowSymlinks, MetadataExt as _};
use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystem, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, DirectoryEntryStream, ErrorCode, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::{FsError, FsResult};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{
    DynInputStream, DynOutputStream, InputStream, OutputStream, StreamError, StreamResult,
};

use super::instance::InstanceState;
use super::meter::{Exceeded, Meter};

/// What a guest's handle, tracked by its table index, holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Held {
    /// A descriptor opened with `open-at`: a host descriptor, and the file's
    /// inode (`None` for a directory).
    Descriptor { file: Option<u64> },
    /// A directory listing.
    Listing,
}

/// The `wasi:filesystem/types` implementation of one instance.
pub(crate) struct ScratchFs<'a> {
    fs: WasiFilesystemCtxView<'a>,
    meter: &'a Meter,
    held: &'a mut HashMap<u32, Held>,
}

/// Names [`ScratchFs`] for `add_to_linker`.
pub(crate) struct ScratchFsData;

impl HasData for ScratchFsData {
    type Data<'a> = ScratchFs<'a>;
}

/// Links the metered `wasi:filesystem/types` over wasmtime-wasi's own, and
/// `wasi:filesystem/preopens` noting that the step asked for its `/tmp`
/// (the linker must allow shadowing).
pub(crate) fn add_to_linker(linker: &mut wasmtime::component::Linker<InstanceState>) -> wasmtime::Result<()> {
    // A guest reaches its `/tmp` only through the descriptor this returns:
    // one that never asks cannot have looked at or left anything in it.
    preopens::add_to_linker::<InstanceState, WasiFilesystem>(linker, |state| {
        state.tmp_opened = true;
        WasiFilesystemCtxView {
            ctx: state.wasi.filesystem(),
            table: &mut state.table,
        }
    })?;
    types::add_to_linker::<InstanceState, ScratchFsData>(linker, |state| ScratchFs {
        fs: WasiFilesystemCtxView {
            ctx: state.wasi.filesystem(),
            table: &mut state.table,
        },
        meter: &state.meter,
        held: &mut state.held,
    })
}

/// What a refusal looks like to the guest.
fn refusal(why: Exceeded) -> FsError {
    match why {
        Exceeded::Bytes { .. } | Exceeded::Entries { .. } => ErrorCode::InsufficientSpace.into(),
        // WASI has no EMFILE; ENOMEM is what the kernel says when it cannot
        // give a process more of what it asked for.
        Exceeded::Handles { .. } | Exceeded::HostHandles { .. } => ErrorCode::InsufficientMemory.into(),
    }
}

/// The error a metered file stream's write fails with: ENOSPC, which
/// `filesystem-error-code` turns into `insufficient-space`.
fn no_space() -> StreamError {
    StreamError::LastOperationFailed(
        std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()).into(),
    )
}

/// The host file behind a descriptor, if it is a file.
fn host_file<'t>(table: &'t ResourceTable, fd: &Resource<Descriptor>) -> FsResult<Option<&'t std::fs::File>> {
    Ok(match table.get(fd)? {
        Descriptor::File(f) => Some(&f.file),
        Descriptor::Dir(_) => None,
    })
}

/// What `path` names under the directory `dir`, resolved as wasmtime-wasi
/// resolves it (sandboxed, the last component not followed).
fn stat_at(
    table: &ResourceTable,
    dir: &Resource<Descriptor>,
    path: &str,
) -> Option<cap_primitives::fs::Metadata> {
    match table.get(dir).ok()? {
        Descriptor::Dir(d) => cap_primitives::fs::stat(&d.dir, Path::new(path), FollowSymlinks::No).ok(),
        Descriptor::File(_) => None,
    }
}

impl ScratchFs<'_> {
    /// The inode of the file `fd` opens, if it is a file.
    fn inode(&self, fd: &Resource<Descriptor>) -> FsResult<Option<u64>> {
        if let Some(Held::Descriptor { file }) = self.held.get(&fd.rep()) {
            return Ok(*file);
        }
        // A descriptor the meter did not open (none today): ask the file.
        Ok(match host_file(self.fs.table, fd)? {
            Some(file) => Some(file.metadata().map_err(FsError::from)?.ino()),
            None => None,
        })
    }

    /// Makes sure the handle table has room for one more entry, so that the
    /// guest gets an error rather than a trap when it is full.
    fn check_table_room(&mut self) -> FsResult<()> {
        let table = &mut *self.fs.table;
        match table.push(()) {
            Ok(probe) => {
                // Its slot goes back to the free list, where the next push finds it.
                table.delete(probe)?;
                Ok(())
            }
            Err(_) => {
                let why = Exceeded::Handles {
                    limit: table.max_capacity() as u64,
                };
                Err(refusal(self.meter.refused(why)))
            }
        }
    }

    /// Replaces the stream at `stream` by one that reports `file`'s use to
    /// the meter (and, for output, asks it before every write).
    fn meter_output(
        &mut self,
        stream: Resource<DynOutputStream>,
        file: u64,
        position: Option<u64>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let inner = self.fs.table.delete(stream)?;
        self.meter.opened(file, 0);
        let metered: DynOutputStream = Box::new(MeteredOutput {
            inner,
            guard: StreamGuard {
                meter: self.meter.clone(),
                file,
            },
            position,
        });
        // The slot just freed is reused: this cannot fail.
        Ok(self.fs.table.push(metered)?)
    }
}

impl types::Host for ScratchFs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.fs, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.fs, err)
    }
}

impl HostDescriptor for ScratchFs<'_> {
    async fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        self.fs.advise(fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.fs.sync_data(fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorFlags> {
        self.fs.get_flags(fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorType> {
        self.fs.get_type(fd).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: types::Filesize) -> FsResult<()> {
        let Some(file) = self.inode(&fd)? else {
            return self.fs.set_size(fd, size).await;
        };
        // Growth is charged before it happens; a shrink refunds only once done.
        let shrinks = host_file(self.fs.table, &fd)?
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| size <= m.len());
        if !shrinks {
            self.meter.resize(file, size).map_err(refusal)?;
        }
        self.fs.set_size(fd, size).await?;
        if shrinks {
            self.meter.resize(file, size).map_err(refusal)?;
        }
        Ok(())
    }

    async fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.fs.set_times(fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        self.fs.read(fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        if let Some(file) = self.inode(&fd)? {
            let end = offset.saturating_add(buf.len() as u64);
            self.meter.grow(file, end).map_err(refusal)?;
        }
        self.fs.write(fd, buf, offset).await
    }

    async fn read_directory(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<DirectoryEntryStream>> {
        self.check_table_room()?;
        self.meter.take_directory_stream().map_err(refusal)?;
        match self.fs.read_directory(fd).await {
            Ok(listing) => {
                self.held.insert(listing.rep(), Held::Listing);
                Ok(listing)
            }
            Err(e) => {
                self.meter.give_back_directory_stream();
                Err(e)
            }
        }
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.fs.sync(fd).await
    }

    async fn create_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.meter.check_entry().map_err(refusal)?;
        self.fs.create_directory_at(fd, path).await?;
        self.meter.entry_added(None).map_err(refusal)
    }

    async fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorStat> {
        self.fs.stat(fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        self.fs.stat_at(fd, path_flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.fs.set_times_at(fd, path_flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        self.meter.check_entry().map_err(refusal)?;
        self.fs
            .link_at(fd, old_path_flags, old_path, new_descriptor, new_path)
            .await?;
        self.meter.entry_added(None).map_err(refusal)
    }

    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        self.check_table_room()?;
        // A name that does not exist yet would be created: at the quota,
        // only names that exist may be opened.
        if oflags.contains(types::OpenFlags::CREATE)
            && self.meter.entries_full()
            && stat_at(self.fs.table, &fd, &path).is_none()
        {
            self.meter.check_entry().map_err(refusal)?;
        }
        self.meter.take_fd().map_err(refusal)?;
        let opened = match self.fs.open_at(fd, path_flags, path, oflags, flags).await {
            Ok(opened) => opened,
            Err(e) => {
                self.meter.give_back_fd();
                return Err(e);
            }
        };
        let file = match host_file(self.fs.table, &opened)? {
            Some(f) => {
                let meta = f.metadata().map_err(FsError::from)?;
                let file = meta.ino();
                // Every file in `/tmp` was made through this layer, so an
                // inode the meter does not know is a name just created.
                if self.meter.opened(file, meta.len()) {
                    self.meter.entry_added(None).map_err(refusal)?;
                }
                if oflags.contains(types::OpenFlags::TRUNCATE) {
                    self.meter.resize(file, 0).map_err(refusal)?;
                }
                Some(file)
            }
            None => None,
        };
        self.held.insert(opened.rep(), Held::Descriptor { file });
        Ok(opened)
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        let held = self.held.remove(&fd.rep());
        HostDescriptor::drop(&mut self.fs, fd)?;
        if let Some(Held::Descriptor { file }) = held {
            if let Some(file) = file {
                self.meter.closed(file);
            }
            self.meter.give_back_fd();
        }
        Ok(())
    }

    async fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        self.fs.readlink_at(fd, path).await
    }

    async fn remove_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.fs.remove_directory_at(fd, path).await?;
        self.meter.entry_removed(None, false);
        Ok(())
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let moved = stat_at(self.fs.table, &fd, &old_path).map(|m| m.ino());
        let replaced = stat_at(self.fs.table, &new_fd, &new_path);
        self.fs.rename_at(fd, old_path, new_fd, new_path).await?;
        // A rename moves a name; one it replaces is gone.
        if let Some(target) = replaced
            && moved != Some(target.ino())
        {
            let last = target.is_dir() || target.nlink() <= 1;
            self.meter.entry_removed(Some(target.ino()), last);
        }
        Ok(())
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        self.meter.check_entry().map_err(refusal)?;
        let target_len = src_path.len() as u64;
        self.meter.check_bytes(target_len).map_err(refusal)?;
        let table_fd = Resource::<Descriptor>::new_borrow(fd.rep());
        self.fs.symlink_at(fd, src_path, dest_path.clone()).await?;
        let link = stat_at(self.fs.table, &table_fd, &dest_path).map(|m| (m.ino(), target_len));
        self.meter.entry_added(link).map_err(refusal)
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        let target = stat_at(self.fs.table, &fd, &path);
        self.fs.unlink_file_at(fd, path).await?;
        match target {
            Some(target) => self.meter.entry_removed(Some(target.ino()), target.nlink() <= 1),
            None => self.meter.entry_removed(None, false),
        }
        Ok(())
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        let file = self.inode(&fd)?;
        self.meter.take_fd().map_err(refusal)?;
        let stream = match self.fs.read_via_stream(fd, offset) {
            Ok(stream) => stream,
            Err(e) => {
                self.meter.give_back_fd();
                return Err(e);
            }
        };
        let Some(file) = file else {
            // Not reached: reading a directory is `is-directory`.
            self.meter.give_back_fd();
            return Ok(stream);
        };
        let inner = self.fs.table.delete(stream)?;
        self.meter.opened(file, 0);
        let metered: DynInputStream = Box::new(MeteredInput {
            inner,
            _guard: StreamGuard {
                meter: self.meter.clone(),
                file,
            },
        });
        Ok(self.fs.table.push(metered)?)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        let file = self.inode(&fd)?;
        self.meter.take_fd().map_err(refusal)?;
        match (self.fs.write_via_stream(fd, offset), file) {
            (Ok(stream), Some(file)) => self.meter_output(stream, file, Some(offset)),
            (result, _) => {
                self.meter.give_back_fd();
                result
            }
        }
    }

    fn append_via_stream(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<DynOutputStream>> {
        let file = self.inode(&fd)?;
        self.meter.take_fd().map_err(refusal)?;
        match (self.fs.append_via_stream(fd), file) {
            (Ok(stream), Some(file)) => self.meter_output(stream, file, None),
            (result, _) => {
                self.meter.give_back_fd();
                result
            }
        }
    }

    async fn is_same_object(
        &mut self,
        a: Resource<Descriptor>,
        b: Resource<Descriptor>,
    ) -> wasmtime::Result<bool> {
        self.fs.is_same_object(a, b).await
    }

    async fn metadata_hash(&mut self, fd: Resource<Descriptor>) -> FsResult<types::MetadataHashValue> {
        self.fs.metadata_hash(fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        self.fs.metadata_hash_at(fd, path_flags, path).await
    }
}

impl HostDirectoryEntryStream for ScratchFs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        self.fs.read_directory_entry(stream).await
    }

    fn drop(&mut self, stream: Resource<DirectoryEntryStream>) -> wasmtime::Result<()> {
        let held = self.held.remove(&stream.rep());
        HostDirectoryEntryStream::drop(&mut self.fs, stream)?;
        if let Some(Held::Listing) = held {
            self.meter.give_back_directory_stream();
        }
        Ok(())
    }
}

/// Tells the meter when a file stream goes away (however it goes: the guest
/// drops it, or the instance ends with it open).
struct StreamGuard {
    meter: Meter,
    file: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.meter.closed(self.file);
        self.meter.give_back_fd();
    }
}

/// A file's output stream whose writes are charged before they are queued.
struct MeteredOutput {
    inner: DynOutputStream,
    guard: StreamGuard,
    /// Where the next write lands; `None` for an append stream.
    position: Option<u64>,
}

impl MeteredOutput {
    fn charge(&mut self, len: usize) -> StreamResult<()> {
        let meter = &self.guard.meter;
        let file = self.guard.file;
        let charged = match self.position {
            Some(at) => meter.grow(file, at.saturating_add(len as u64)),
            None => meter.append(file, len as u64),
        };
        charged.map_err(|_| no_space())?;
        if let Some(at) = &mut self.position {
            *at = at.saturating_add(len as u64);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Pollable for MeteredOutput {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[async_trait::async_trait]
impl OutputStream for MeteredOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.blocking_write_and_flush(bytes).await
    }

    fn write_zeroes(&mut self, nelem: usize) -> StreamResult<()> {
        self.charge(nelem)?;
        self.inner.write_zeroes(nelem)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

/// A file's input stream, tracked only so that the file counts as open
/// while it lives.
struct MeteredInput {
    inner: DynInputStream,
    _guard: StreamGuard,
}

#[async_trait::async_trait]
impl Pollable for MeteredInput {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[async_trait::async_trait]
impl InputStream for MeteredInput {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.inner.read(size)
    }

    async fn blocking_read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.inner.blocking_read(size).await
    }

    fn skip(&mut self, nelem: usize) -> StreamResult<usize> {
        self.inner.skip(nelem)
    }

    async fn blocking_skip(&mut self, nelem: usize) -> StreamResult<usize> {
        self.inner.blocking_skip(nelem).await
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_stream_write_reads_back_as_insufficient_space() {
        let StreamError::LastOperationFailed(e) = no_space() else {
            panic!("not a failed operation");
        };
        let io = e.downcast_ref::<std::io::Error>().expect("an io::Error");
        assert_eq!(ErrorCode::from(io), ErrorCode::InsufficientSpace);
    }
}
