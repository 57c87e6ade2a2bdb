//! `midosoc serve`: opens everything, binds both listeners, says where they
//! are, and runs until a signal.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use midosoc_core::ApprovalStore;
use tokio::net::TcpListener;

use crate::app;
use crate::config::{Config, LogFormat};
use crate::framing::{GuardedListener, Peer};
use crate::identity::Role;
use crate::review::OidcSignIn;
use crate::shutdown::{self, Shutdown};

/// How often pending approvals past their deadline are expired.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

/// Name of the analyst account created on first start.
const FIRST_ANALYST: &str = "admin";

/// Runs the gateway until SIGINT or SIGTERM.
pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let agent_listener = bind(config.agent.listen, "agent.listen").await?;
    let review_listener = bind(config.review.listen, "review.listen").await?;
    let agent_addr = agent_listener.local_addr()?;
    let review_addr = review_listener.local_addr()?;
    let agent_url = listener_url(config.agent.public_url.as_deref(), agent_addr);
    let review_url = listener_url(config.review.public_url.as_deref(), review_addr);

    let parts = app::open(&config, &agent_url).await?;
    // With single sign-on, analysts come from the provider: no local
    // admin token is made up and printed.
    let first_analyst = match parts.identities.count_analysts().await? {
        0 if config.review.oidc.is_none() => {
            Some(parts.identities.add_analyst(FIRST_ANALYST, Role::Admin).await?)
        }
        _ => None,
    };
    let oidc = match &config.review.oidc {
        Some(oidc) => Some(Arc::new(
            OidcSignIn::new(oidc, &review_url, config.secure_cookies())
                .context("cannot set up single sign-on")?,
        )),
        None => None,
    };
    let metrics = crate::metrics::install().context("cannot install the metrics recorder")?;
    let shutdown = Shutdown::new();
    let state = app::state(&config, &agent_url, parts, Some(metrics), shutdown.watch())?;

    let store = state.store.clone();
    tokio::spawn(async move { midosoc_core::store::run_expiry(&*store, EXPIRY_INTERVAL).await });
    let counted_from = crate::metrics::count_pending(&*state.store).await;
    tokio::spawn(crate::metrics::follow_store(state.store.clone(), counted_from));
    tokio::spawn(crate::outage::watch(state.store.clone(), state.store_health.clone()));

    let agent_router = app::agent_router(state.clone());
    let review_router = app::review_router(state.clone(), config.secure_cookies(), oidc);
    print_banner(&config, &agent_url, &review_url, first_analyst.as_deref());

    let agent = serve_agents(agent_listener, agent_router, shutdown.clone());
    let review = serve_analysts(review_listener, review_router, shutdown.clone());
    let servers = tokio::spawn(async move { tokio::join!(agent, review) });

    shutdown::signal().await;
    shutdown.trigger();
    drain(servers, config.shutdown.grace, &state.store).await;
    Ok(())
}

/// Binds a listener, naming the key to change when the port is taken.
async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on `{addr}`; change `{key}` or free the port"))
}

fn listener_url(configured: Option<&str>, addr: SocketAddr) -> String {
    match configured {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => format!("http://{addr}"),
    }
}

/// Serves the agent listener until the switch flips, then lets requests
/// in flight finish. Its connections are watched for ambiguous framing.
async fn serve_agents(listener: TcpListener, router: Router, shutdown: Shutdown) {
    let listener = GuardedListener(listener);
    let service = router.into_make_service_with_connect_info::<Peer>();
    let stopping = async move { shutdown.triggered().await };
    if let Err(error) = axum::serve(listener, service).with_graceful_shutdown(stopping).await {
        tracing::error!(%error, "agent listener failed");
    }
}

/// Serves the review listener until the switch flips.
async fn serve_analysts(listener: TcpListener, router: Router, shutdown: Shutdown) {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let stopping = async move { shutdown.triggered().await };
    if let Err(error) = axum::serve(listener, service).with_graceful_shutdown(stopping).await {
        tracing::error!(%error, "review listener failed");
    }
}

/// Gives requests in flight `grace` to finish, then gives up on them.
async fn drain<T>(
    servers: tokio::task::JoinHandle<T>,
    grace: Duration,
    store: &Arc<dyn ApprovalStore>,
) {
    if tokio::time::timeout(grace, servers).await.is_err() {
        let pending = store
            .list(&midosoc_core::store::ApprovalFilter {
                status: Some(midosoc_core::ApprovalStatus::Pending),
                ..Default::default()
            })
            .await
            .map(|list| list.len())
            .unwrap_or_default();
        tracing::warn!(grace = ?grace, approvals.pending = pending, "requests still in flight; stopping anyway");
    }
    tracing::info!("stopped");
}

/// Tells the operator where everything is, on standard output.
fn print_banner(config: &Config, agent_url: &str, review_url: &str, first_analyst: Option<&str>) {
    println!("midosoc is running");
    println!(
        "  agent listener: {agent_url}  (point agents here; add one with `midosoc agent add NAME`)"
    );
    println!("  dashboard:      {review_url}/");
    if let Some(oidc) = &config.review.oidc {
        println!("  analysts:       sign in with {} ({})", oidc.display_name, oidc.issuer);
    }
    if config.upstream.is_empty() {
        println!("  upstreams:      none; add [[upstream]] tables (see `midosoc config example`)");
    }
    for up in &config.upstream {
        println!("  upstream:       {agent_url}{} -> {} ({})", up.prefix, up.url, up.name);
    }
    if config.classifier.llm.is_some() {
        println!("  classifier:     {}", config.classifier);
    }
    println!("  data:           {}", config.data_dir.display());
    if let Some(token) = first_analyst {
        println!();
        println!("First start: analyst `{FIRST_ANALYST}` (role admin) was created.");
        println!("Sign in at {review_url}/ with this token; it is shown only once:");
        println!("  {token}");
    }
    println!("Ready; stop with Ctrl-C (held requests are answered 503 and stay pending).");
}

/// Sets up logging to standard error.
pub(crate) fn init_logging(config: &Config, format: Option<LogFormat>) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.filter)
        .context("invalid value for `log.filter`")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format.unwrap_or(config.log.format) {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}
