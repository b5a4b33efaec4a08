//! s3s-fs with one change: object bodies are read from disk in 1 MiB blocks.
//!
//! s3s-fs 0.14.1 streams a GET through `ReaderStream::with_capacity(file, 4096)`: one trip to
//! tokio's blocking pool per 4 KiB, ~524k for 2 GiB, which took more than one of this
//! machine's two cores and made the server, not the client, what `scripts/bench-fetch.sh`
//! measured. Everything else — signatures, headers, ETags, checksums, range checks, errors —
//! is s3s-fs's own answer: [`Store::get_object`] asks s3s-fs first and only swaps the body for
//! the same bytes read in larger blocks.

use std::io::SeekFrom;
use std::path::PathBuf;

use s3s::dto::{GetObjectInput, GetObjectOutput, StreamingBlob};
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

/// Bytes per read of an object body.
const READ_BLOCK: usize = 1 << 20;

pub struct Store {
    fs: s3s_fs::FileSystem,
    /// The root as s3s-fs resolves it (absolute, canonical).
    root: PathBuf,
}

impl Store {
    pub fn new(root: &std::path::Path) -> std::io::Result<Self> {
        let root = std::env::current_dir()?.join(root).canonicalize()?;
        let fs = s3s_fs::FileSystem::new(&root)
            .map_err(|e| std::io::Error::other(format!("s3s-fs at {}: {e:?}", root.display())))?;
        Ok(Self { fs, root })
    }
}

/// `impl S3 for Store`: the methods in `own` are this module's, the operations in `delegated`
/// are handed to s3s-fs unchanged. (One macro for the whole impl: `async_trait` must see the
/// methods the list expands to.)
macro_rules! impl_s3 {
    (own { $($own:item)* } delegated { $($op:ident($input:ident) -> $output:ident;)* }) => {
        #[async_trait::async_trait]
        impl S3 for Store {
            $($own)*
            $(
                async fn $op(
                    &self,
                    req: S3Request<s3s::dto::$input>,
                ) -> S3Result<S3Response<s3s::dto::$output>> {
                    self.fs.$op(req).await
                }
            )*
        }
    };
}

impl_s3! {
own {
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let path = self.root.join(&req.input.bucket).join(&req.input.key);
        let range = req.input.range;
        let mut resp = self.fs.get_object(req).await?;
        let out = &mut resp.output;
        let length = out.content_length.unwrap_or(0).max(0) as u64;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| s3_error!(e, NoSuchKey))?;
        let file_len = file.metadata().await.map_err(internal)?.len();
        let start = match range {
            Some(r) => r.check(file_len)?.start,
            None => 0,
        };
        file.seek(SeekFrom::Start(start)).await.map_err(internal)?;
        let body = ReaderStream::with_capacity(file.take(length), READ_BLOCK);
        out.body = Some(StreamingBlob::wrap(body));
        Ok(resp)
    }
}
// Every other operation s3s-fs implements; the rest answer NotImplemented, as s3s-fs's do.
delegated {
    create_bucket(CreateBucketInput) -> CreateBucketOutput;
    copy_object(CopyObjectInput) -> CopyObjectOutput;
    delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
    delete_object(DeleteObjectInput) -> DeleteObjectOutput;
    delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
    get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
    head_bucket(HeadBucketInput) -> HeadBucketOutput;
    head_object(HeadObjectInput) -> HeadObjectOutput;
    list_buckets(ListBucketsInput) -> ListBucketsOutput;
    list_objects(ListObjectsInput) -> ListObjectsOutput;
    list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output;
    put_object(PutObjectInput) -> PutObjectOutput;
    create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
    upload_part(UploadPartInput) -> UploadPartOutput;
    upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
    list_parts(ListPartsInput) -> ListPartsOutput;
    complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
    abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
}
}

fn internal(e: std::io::Error) -> s3s::S3Error {
    s3_error!(e, InternalError)
}
