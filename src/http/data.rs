//! `/data`: accept a write (`POST`), read one record, list records.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, RawQuery, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use http_body_util::LengthLimitError;
use serde::{Deserialize, Serialize};
use serde_json::error::Category;
use uuid::Uuid;

use super::{ApiError, AppState, DataState, MAX_BODY_BYTES, Problem, guard::Admitted};
use crate::{
    cache::Cached,
    domain::{Cursor, DataMessage, Record, validate_value},
    storage::StoreError,
    telemetry::error_chain,
};

/// Where a record is read: `Location` of an accepted write.
const RECORD_PREFIX: &str = "/data/";

/// The `/data` routes.
pub fn router() -> Router<DataState> {
    Router::new()
        .route("/data", post(create).get(list))
        .route("/data/{id}", get(read))
}

/// Body of `POST /data`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateData {
    /// 1 to 8,192 bytes of UTF-8, without the NUL character (U+0000), which
    /// the store cannot hold.
    #[schema(
        min_length = 1,
        max_length = 8192,
        pattern = r"^[^\u0000]+$",
        example = "hello"
    )]
    pub value: String,
}

/// Answer to an accepted write.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub id: Uuid,
    /// Always `accepted`.
    #[schema(example = "accepted")]
    pub status: &'static str,
}

/// Answer to a read of a write that is accepted but not yet persisted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Pending {
    pub id: Uuid,
    /// Always `pending`.
    #[schema(example = "pending")]
    pub status: &'static str,
}

/// One page of `GET /data`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    /// Newest first.
    pub items: Vec<Record>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = r"^A[Q-Za-f][A-Za-z0-9_-]{20}[AEIMQUYcgkosw048]$")]
    cursor: Option<String>,
}

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Accept a write.
///
/// The record is queued and persisted asynchronously. 202 is answered only
/// once the broker has confirmed the message; read the record at `Location`.
#[utoipa::path(
    post,
    path = "/data",
    tag = "data",
    request_body = CreateData,
    responses(
        (status = 202, description = "Accepted: queued durably, readable at `Location` soon",
            body = Accepted,
            headers(("Location" = String, description = "`/data/{id}` of the new record")),
            links(("GetRecordById" = (operation_id = "read_record", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "An API key is required (when `SVC_API_KEYS` is set) and none valid was given", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`value` missing, not a string, empty, over 8,192 bytes, or holding a NUL character (U+0000)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited; retry after `Retry-After` seconds", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "Broker unavailable or server at capacity; retry after `Retry-After` seconds", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    operation_id = "create_record"
)]
async fn create(
    _admitted: Admitted,
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    if !is_json(request.headers()) {
        return Err(ApiError::unsupported_media_type());
    }
    let request = parse_create(&read_body(request).await?)?;
    validate_value(&request.value).map_err(|err| ApiError::invalid_value(err.to_string()))?;

    let message = DataMessage::accept(request.value);
    let id = message.id;
    // The marker goes out first and the publish right after, so their round
    // trips overlap; the marker's is nearly always over when the confirm
    // arrives. If the consumer's removal of the marker wins the race, the
    // marker outlives the write: harmless, since a read of a pending id
    // still looks in the database first.
    let marking = state.cache.mark_pending(id);
    if let Err(err) = state.publisher.publish(&message).await {
        tracing::warn!(%id, error = %error_chain(&err), "write refused: not confirmed by the broker");
        let cache = state.cache.clone();
        tokio::spawn(async move {
            // Once written, or the removal could come first and leave it.
            let _ = marking.written().await;
            let _ = cache.clear_pending(id).await;
        });
        return Err(ApiError::unavailable(
            "the write could not be queued durably; it was not accepted, retry later",
        ));
    }
    if let Err(err) = marking.written().await {
        state.metrics.cache_error();
        tracing::warn!(%id, error = %error_chain(&err), "cannot mark the write pending");
    }

    let mut id_text = Uuid::encode_buffer();
    let location = [RECORD_PREFIX, id.hyphenated().encode_lower(&mut id_text)].concat();
    let location = HeaderValue::try_from(location).expect("a path is a valid header");
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(Accepted {
            id,
            status: "accepted",
        }),
    )
        .into_response())
}

/// The body of `POST /data`. Only the parsed value outlives this: the body
/// itself is a view into the connection's read buffer, which hyper can then
/// reuse for the next request instead of allocating another while the write
/// waits for its confirm.
fn parse_create(body: &[u8]) -> Result<CreateData, ApiError> {
    serde_json::from_slice(body).map_err(|err| match err.classify() {
        // Valid JSON of the wrong shape: `value` missing, null, or not a string.
        Category::Data => ApiError::invalid_value(format!("`value` must be a string ({err})")),
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::malformed_json(format!("the body is not valid JSON ({err})"))
        }
    })
}

/// The request body, at most `MAX_BODY_BYTES` of it (a declared length over
/// that is refused before anything is read).
async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|err| {
            if err.into_inner().is::<LengthLimitError>() {
                ApiError::payload_too_large(MAX_BODY_BYTES)
            } else {
                ApiError::malformed_json("the body could not be read")
            }
        })
}

/// Outcome of a coalesced database read, shared by every waiting request.
#[derive(Debug, Clone)]
pub(crate) enum Loaded {
    Found(Bytes),
    Absent,
    Unavailable,
    Failed,
}

/// Read one record.
///
/// Served from the cache when it can be, else from the read database (and
/// then cached). A write that is accepted but not yet persisted reads as 202.
#[utoipa::path(
    get,
    path = "/data/{id}",
    tag = "data",
    params(("id" = Uuid, Path, description = "The id answered by `POST /data`")),
    responses(
        (status = 200, description = "The record", body = Record),
        (status = 202, description = "Accepted but not yet persisted: try again shortly", body = Pending),
        (status = 400, description = "`id` is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such record", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited; retry after `Retry-After` seconds", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable or the server is at capacity", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    operation_id = "read_record"
)]
async fn read(
    _admitted: Admitted,
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let id =
        Uuid::try_parse(&raw_id).map_err(|_| ApiError::bad_parameter("`id` must be a UUID"))?;

    let cached = match state.cache.lookup(id).await {
        Ok(Cached::Record(body)) => {
            state.metrics.cache_hit();
            return Ok(json_body(StatusCode::OK, body));
        }
        Ok(other) => {
            state.metrics.cache_miss();
            other
        }
        Err(err) => {
            state.metrics.cache_error();
            tracing::debug!(%id, error = %error_chain(&err), "cache lookup failed; reading the database");
            Cached::Miss
        }
    };

    // Even a pending id is looked up: the row may be committed while the
    // consumer's cache write-through failed.
    let loaded = state.reads.run(id, || load(state.clone(), id)).await;
    match loaded {
        Loaded::Found(body) => Ok(json_body(StatusCode::OK, body)),
        Loaded::Absent if cached == Cached::Pending => Ok((
            StatusCode::ACCEPTED,
            Json(Pending {
                id,
                status: "pending",
            }),
        )
            .into_response()),
        Loaded::Absent => Err(ApiError::not_found(format!("no record has id {id}"))),
        Loaded::Unavailable => Err(ApiError::unavailable("the database is unavailable")),
        Loaded::Failed => Err(ApiError::internal(&LoadFailed)),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("reading a record failed (see the error logged before)")]
struct LoadFailed;

/// Reads the database and fills the cache: run once per id however many
/// requests missed at the same moment.
async fn load(state: AppState, id: Uuid) -> Loaded {
    match state.store.get(id).await {
        Ok(Some(record)) => {
            let body = Bytes::from(record.to_json());
            if let Err(err) = state.cache.store_record(id, body.clone()).await {
                state.metrics.cache_error();
                tracing::debug!(%id, error = %error_chain(&err), "cannot cache the record");
            }
            Loaded::Found(body)
        }
        Ok(None) => Loaded::Absent,
        Err(err @ StoreError::Unavailable(_)) => {
            tracing::warn!(%id, error = %error_chain(&err), "read failed");
            Loaded::Unavailable
        }
        Err(err) => {
            tracing::error!(%id, error = %error_chain(&err), "read failed");
            Loaded::Failed
        }
    }
}

fn json_body(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// List records, newest first.
///
/// Keyset pagination: follow `next_cursor` until it is `null`. Records
/// written while paging appear only on a new first page, never twice.
#[utoipa::path(
    get,
    path = "/data",
    tag = "data",
    params(ListParams),
    responses(
        (status = 200, description = "One page of records", body = Page),
        (status = 400, description = "Bad `limit` or `cursor`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited; retry after `Retry-After` seconds", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable or the server is at capacity", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    ),
    operation_id = "list_records"
)]
async fn list(
    _admitted: Admitted,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Page>, ApiError> {
    let params: ListParams = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|_| ApiError::bad_parameter("the query string is malformed"))?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_parameter(format!(
                    "`limit` must be a whole number from 1 to {MAX_LIMIT}"
                ))
            })?,
    };
    let before = match params.cursor.as_deref() {
        None => None,
        Some(text) => Some(
            Cursor::decode(text)
                .map_err(|err| ApiError::bad_parameter(err.to_string()))?
                .after,
        ),
    };

    // One row more than asked tells whether another page exists.
    let mut items = state
        .store
        .list(before, limit + 1)
        .await
        .map_err(|err| match err {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %error_chain(&err), "list failed");
                ApiError::unavailable("the database is unavailable")
            }
            StoreError::Refused(_) | StoreError::Query(_) => ApiError::internal(&err),
        })?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| Cursor::new(last.id).encode())
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        headers
    }

    #[test]
    fn json_content_types_are_recognised() {
        assert!(is_json(&headers("application/json")));
        assert!(is_json(&headers("application/json; charset=utf-8")));
        assert!(is_json(&headers("Application/JSON")));
        assert!(is_json(&headers("application/merge-patch+json")));
        assert!(!is_json(&headers("text/plain")));
        assert!(!is_json(&headers("application/x-www-form-urlencoded")));
        assert!(!is_json(&HeaderMap::new()));
    }
}
