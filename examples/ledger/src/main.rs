//! A small ledger API wearing Midosoc's approval layer.
//!
//! Port 3000 is the API an agent calls: balances pass at once, transfers
//! and account closures wait until a person approves them on port 3001.
//! The README beside this crate walks through it with curl.

mod ledger;
mod review;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use midosoc_core::classify::HeuristicClassifier;
use midosoc_core::store::{MemoryStore, run_expiry};
use midosoc_core::token::LocalIssuer;
use midosoc_tower::{HumanApprovalLayer, VerifyTokenLayer};
use tokio::net::TcpListener;

/// Where agents call the ledger.
const API_ADDR: &str = "127.0.0.1:3000";
/// Where a person approves or denies held calls.
const REVIEW_ADDR: &str = "127.0.0.1:3001";
/// Issuer and audience of the tokens minted for approved calls.
const ISSUER: &str = "http://127.0.0.1:3000";
const AUDIENCE: &str = "ledger";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();

    // One store shared by the layer (which waits on it) and the review
    // routes (which decide in it).
    let store = Arc::new(MemoryStore::new());
    let issuer = LocalIssuer::generate(ISSUER, AUDIENCE);

    // The write routes accept only a token minted for one approved call.
    let verify = VerifyTokenLayer::new(issuer.jwks().clone(), ISSUER, AUDIENCE);
    let approval = HumanApprovalLayer::new(HeuristicClassifier::default(), store.clone(), issuer)
        .wait_timeout(Duration::from_secs(120));

    let api = ledger::router(verify).layer(approval);
    let review = review::router(store.clone());
    tokio::spawn(async move { run_expiry(&*store, Duration::from_secs(10)).await });

    let api_listener = TcpListener::bind(API_ADDR)
        .await
        .with_context(|| format!("cannot listen on {API_ADDR}"))?;
    let review_listener = TcpListener::bind(REVIEW_ADDR)
        .await
        .with_context(|| format!("cannot listen on {REVIEW_ADDR}"))?;
    tracing::info!(api = API_ADDR, review = REVIEW_ADDR, "ledger listening");

    tokio::try_join!(
        axum::serve(api_listener, api).into_future(),
        axum::serve(review_listener, review).into_future(),
    )?;
    Ok(())
}
