//! The OpenAPI document, generated from the handlers, and Swagger UI
//! (assets vendored in the binary: it works offline).

use axum::Router;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use super::data;
use crate::{domain::Record, health, problem::Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "svc",
        description = "Accept writes asynchronously, serve reads from cache.",
        license(name = "MIT")
    ),
    paths(data::create, data::read, data::list, health::live, health::ready),
    components(schemas(
        Record,
        Problem,
        data::CreateData,
        data::Accepted,
        data::Pending,
        data::Page,
        health::Ready,
        health::Live
    )),
    tags(
        (name = "data", description = "Write and read records"),
        (name = "health", description = "Probes for orchestrators")
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json` and `GET /docs`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    SwaggerUi::new("/docs")
        .url("/openapi.json", ApiDoc::openapi())
        .into()
}
