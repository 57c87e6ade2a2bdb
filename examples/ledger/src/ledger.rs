//! The ledger itself: a few accounts in memory and the routes an agent
//! calls.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use midosoc_tower::{ApprovedAction, VerifyTokenLayer};
use serde::Deserialize;
use serde_json::{Value, json};

/// Balances in cents, by account id.
#[derive(Clone, Debug)]
struct Ledger(Arc<Mutex<BTreeMap<u32, i64>>>);

impl Ledger {
    fn with_demo_accounts() -> Self {
        Self(Arc::new(Mutex::new(BTreeMap::from([(1, 25_000), (2, 8_000), (3, 0)]))))
    }

    fn accounts(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, i64>> {
        // Balances stay consistent under a poisoned lock: every update
        // below is a single insert or remove.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Deserialize)]
struct Transfer {
    from: u32,
    to: u32,
    amount_cents: i64,
}

type Answer = Result<Json<Value>, (StatusCode, Json<Value>)>;

fn refuse(status: StatusCode, why: &str) -> (StatusCode, Json<Value>) {
    (status, Json(json!({ "error": why })))
}

/// The routes. Reads are open; transfers and closures require a token
/// minted for exactly that call, which only an approval produces.
pub(crate) fn router(verify: VerifyTokenLayer) -> Router {
    Router::new()
        .route("/accounts/{id}", get(balance))
        .route("/accounts/{id}", delete(close).layer(verify.clone()))
        .route("/transfers", post(transfer).layer(verify))
        .with_state(Ledger::with_demo_accounts())
}

async fn balance(State(ledger): State<Ledger>, Path(id): Path<u32>) -> Answer {
    let accounts = ledger.accounts();
    let cents =
        accounts.get(&id).ok_or_else(|| refuse(StatusCode::NOT_FOUND, "no such account"))?;
    Ok(Json(json!({ "account": id, "balance_cents": cents })))
}

async fn transfer(
    State(ledger): State<Ledger>,
    Extension(approved): Extension<ApprovedAction>,
    Json(t): Json<Transfer>,
) -> Answer {
    let mut accounts = ledger.accounts();
    if t.amount_cents <= 0 || t.from == t.to {
        return Err(refuse(StatusCode::UNPROCESSABLE_ENTITY, "not a valid transfer"));
    }
    let (Some(&from), Some(&to)) = (accounts.get(&t.from), accounts.get(&t.to)) else {
        return Err(refuse(StatusCode::NOT_FOUND, "no such account"));
    };
    if from < t.amount_cents {
        return Err(refuse(StatusCode::UNPROCESSABLE_ENTITY, "insufficient funds"));
    }

    accounts.insert(t.from, from - t.amount_cents);
    accounts.insert(t.to, to + t.amount_cents);
    Ok(Json(json!({
        "transferred_cents": t.amount_cents,
        "approved_by": approved.analyst.name,
        "approval_id": approved.approval_id,
    })))
}

async fn close(
    State(ledger): State<Ledger>,
    Extension(approved): Extension<ApprovedAction>,
    Path(id): Path<u32>,
) -> Answer {
    let paid_out = ledger
        .accounts()
        .remove(&id)
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "no such account"))?;
    Ok(Json(json!({
        "closed": id,
        "paid_out_cents": paid_out,
        "approved_by": approved.analyst.name,
        "approval_id": approved.approval_id,
    })))
}
