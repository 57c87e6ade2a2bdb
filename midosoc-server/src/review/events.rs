//! The live event stream: every store event as a Server-Sent Event, so the
//! dashboard shows a held request within a blink.
//!
//! Each SSE message has the event's `seq` as its `id`, its kind (`pending`,
//! `decided`, `withdrawn`, `expired`, `executed`) as its `event` name and an
//! [`EventView`] as its data. A client that reconnects with `Last-Event-ID`
//! gets the events after that one and then live ones, with no gap and no
//! duplicate. When the store cannot fill a gap (the client fell too far
//! behind), the stream sends one `resync` event and ends; `resync` carries
//! an empty `id`, so a browser reconnects from scratch, and the client
//! should reload its lists.
//!
//! Comment lines keep idle connections open through proxies, and the
//! response says `X-Accel-Buffering: no` so nginx does not hold events
//! back. The stream is never compressed (tower-http's compression leaves
//! `text/event-stream` alone).

// LIMITATION: a client connecting without `Last-Event-ID` receives every
// event the store still retains before the live ones (the store trait has
// no "from now on" cursor). The dashboard applies them idempotently; the
// cost is one replay of the retained history per fresh page load.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use midosoc_core::StoreError;
use midosoc_core::store::{EventStream, StoreEvent};
use tokio::sync::OwnedSemaphorePermit;

use super::Shared;
use super::error::{Problem, ReviewError};
use super::session::Reviewer;
use super::view::EventView;

/// How often an idle stream sends a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long a browser waits before reconnecting after the stream ends.
const RETRY: Duration = Duration::from_secs(1);

/// Streams store events as Server-Sent Events.
#[utoipa::path(
    get, path = "/api/events", operation_id = "streamEvents", tag = "events",
    params(("Last-Event-ID" = Option<u64>, Header, description = "resume after this event")),
    responses(
        (
            status = 200, content_type = "text/event-stream", body = super::view::EventView,
            description = "an endless `text/event-stream`; each message's data is an event",
        ),
        (
            status = 400, body = Problem, content_type = "application/problem+json",
            description = "malformed `Last-Event-ID`",
        ),
        (
            status = 401, body = Problem, content_type = "application/problem+json",
            description = "not signed in",
        ),
        (
            status = 503, body = Problem, content_type = "application/problem+json",
            description = "too many streams open",
        ),
    ),
    security(("bearer" = []), ("session" = []))
)]
#[tracing::instrument(skip_all, fields(analyst.id = %reviewer.account.id, after))]
pub(super) async fn stream(
    reviewer: Reviewer,
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ReviewError> {
    let after = last_event_id(&headers)?;
    tracing::Span::current().record("after", after);

    // SECURITY: each stream holds a task and a store subscription for as
    // long as the client likes; the permit caps how many exist at once.
    let permit =
        state.streams.clone().try_acquire_owned().map_err(|_| ReviewError::TooManyStreams)?;
    let events = state.store.subscribe(after).await?;
    tracing::debug!("event stream opened");

    let sse = Sse::new(messages(events, permit))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"));
    let buffering = (HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
    Ok(([buffering], sse).into_response())
}

/// The `Last-Event-ID` header as a `seq`, or `400`.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ReviewError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ReviewError::BadRequest("`Last-Event-ID` is not an event sequence number".to_owned())
    })
}

/// Store events as SSE messages, ending after a `resync` or a store
/// failure. The permit is released when the client goes away.
fn messages(
    events: EventStream,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(Some((events, permit)), |open| async move {
        let (mut events, permit) = open?;
        match events.next().await? {
            Ok(event) => Some((Ok(message(&event)), Some((events, permit)))),
            Err(StoreError::Lagged(missed)) => {
                tracing::info!(missed, "event subscriber fell behind; asking it to resync");
                Some((Ok(resync(missed)), None))
            }
            Err(error) => {
                tracing::warn!(%error, "event stream ended by a store failure");
                None
            }
        }
    })
}

/// One store event as an SSE message.
fn message(event: &StoreEvent) -> Event {
    let base = Event::default().id(event.seq.to_string()).event(event.kind.as_str());
    match base.json_data(EventView::from(event)) {
        Ok(message) => message,
        // Serialising plain strings and numbers does not fail; if it ever
        // did, a resync makes the client reload rather than miss a change.
        Err(error) => {
            tracing::warn!(%error, seq = event.seq, "cannot encode event");
            resync(0)
        }
    }
}

/// Tells the client to reload its state and reconnect without a cursor.
fn resync(missed: u64) -> Event {
    Event::default().event("resync").id("").retry(RETRY).data(format!("{{\"missed\":{missed}}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_is_a_sequence_number_or_absent() {
        let mut headers = HeaderMap::new();
        assert_eq!(last_event_id(&headers).unwrap(), None);
        headers.insert("last-event-id", HeaderValue::from_static("42"));
        assert_eq!(last_event_id(&headers).unwrap(), Some(42));
        headers.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(last_event_id(&headers).unwrap(), None);
        headers.insert("last-event-id", HeaderValue::from_static("forty-two"));
        assert!(matches!(last_event_id(&headers), Err(ReviewError::BadRequest(_))));
    }
}
