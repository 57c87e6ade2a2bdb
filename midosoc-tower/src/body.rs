//! Reading a request body whole, up to a limit, for the layers that must
//! see every byte before deciding.

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};

/// Errors of a request body stream.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The body is larger than the limit.
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: usize },

    /// The body stream failed.
    #[error("request body could not be read")]
    Unreadable(#[source] BoxError),
}

/// Reads the whole body, refusing more than `limit` bytes. A declared
/// `Content-Length` over the limit is refused before reading anything.
pub(crate) async fn read_limited<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
) -> Result<Bytes, BodyError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }

    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(error) => Err(BodyError::Unreadable(error)),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    #[tokio::test]
    async fn body_within_the_limit_is_read_whole() {
        let body = Full::new(Bytes::from_static(b"hello"));
        let read = read_limited(&HeaderMap::new(), body, 5).await.unwrap();
        assert_eq!(read, Bytes::from_static(b"hello"));
    }

    #[tokio::test]
    async fn body_over_the_limit_is_refused_even_without_content_length() {
        let body = Full::new(Bytes::from_static(b"hello!"));
        let error = read_limited(&HeaderMap::new(), body, 5).await.unwrap_err();
        assert!(matches!(error, BodyError::TooLarge { limit: 5 }));
    }

    #[tokio::test]
    async fn declared_length_over_the_limit_is_refused_before_reading() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, http::HeaderValue::from_static("6000000"));
        let error = read_limited(&headers, Full::new(Bytes::new()), 5).await.unwrap_err();
        assert!(matches!(error, BodyError::TooLarge { limit: 5 }));
    }
}
