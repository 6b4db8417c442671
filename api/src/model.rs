//! Request and response bodies, and their mapping from database rows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NewStatus {
    Started,
    Completed,
}

impl NewStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NewStatus::Started => "started",
            NewStatus::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FinalStatus {
    Completed,
    Abandoned,
}

impl FinalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FinalStatus::Completed => "completed",
            FinalStatus::Abandoned => "abandoned",
        }
    }
}

/// A session to record. Send a `session_id` to make retries safe.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    pub session_id: Option<Uuid>,
    /// Defaults to the token's `sub`. A user token may name only its own.
    #[schema(min_length = 1, pattern = r"^[^\u0000]+$")]
    pub user_id: Option<String>,
    /// A session kind this service knows: practice, learning_plan and assessment,
    /// and any kind its operator added.
    #[schema(min_length = 1, pattern = r"^[^\u0000]+$", example = "practice")]
    pub kind: String,
    pub learning_plan_id: Option<Uuid>,
    /// `completed` (default) counts now; `started` reserves a slot until completed.
    pub status: Option<NewStatus>,
    /// RFC 3339; defaults to now; at most 5 minutes ahead. With a user token, at most
    /// TALLY_MAX_BACKDATE (24 hours) in the past and within the current billing period.
    pub started_at: Option<DateTime<Utc>>,
    /// Not before `started_at`.
    pub completed_at: Option<DateTime<Utc>>,
    #[schema(minimum = 0)]
    pub duration_seconds: Option<i32>,
}

/// How a session ends.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionUpdate {
    pub status: FinalStatus,
    pub completed_at: Option<DateTime<Utc>>,
    #[schema(minimum = 0)]
    pub duration_seconds: Option<i32>,
}

/// A session as stored. Read from rows, and from the JSON `tally.record_session` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Session {
    pub session_id: Uuid,
    pub user_id: String,
    pub kind: String,
    pub learning_plan_id: Option<Uuid>,
    /// started, completed or abandoned
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_seconds: Option<i32>,
    pub created_at: DateTime<Utc>,
}

pub const SESSION_COLUMNS: &str =
    "session_id, user_id, kind, learning_plan_id, status, started_at, completed_at, duration_seconds, created_at";

impl From<&Row> for Session {
    fn from(row: &Row) -> Self {
        Session {
            session_id: row.get("session_id"),
            user_id: row.get("user_id"),
            kind: row.get("kind"),
            learning_plan_id: row.get("learning_plan_id"),
            status: row.get("status"),
            started_at: row.get("started_at"),
            completed_at: row.get("completed_at"),
            duration_seconds: row.get("duration_seconds"),
            created_at: row.get("created_at"),
        }
    }
}

impl Session {
    /// True when every field the request names matches this session, so the request
    /// is a retry of the one that created it. A session created as `started` that has
    /// moved on since still matches its original create.
    pub fn matches(&self, request: &NewSession, user_id: &str) -> bool {
        let status_matches = match request.status.unwrap_or(NewStatus::Completed) {
            NewStatus::Completed => self.status == "completed",
            NewStatus::Started => true,
        };
        self.user_id == user_id
            && self.kind == request.kind
            && self.learning_plan_id == request.learning_plan_id
            && status_matches
            && request.started_at.is_none_or(|t| t == self.started_at)
            && request
                .completed_at
                .is_none_or(|t| Some(t) == self.completed_at)
            && request
                .duration_seconds
                .is_none_or(|d| Some(d) == self.duration_seconds)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Counter {
    pub used: i32,
    /// null when the plan is unlimited
    pub limit: Option<i32>,
    /// limit - used - in progress, never below 0; null when unlimited
    pub remaining: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LearningPlanProgress {
    pub learning_plan_id: Uuid,
    pub title: String,
    pub completed_sessions: i32,
    pub total_sessions: Option<i32>,
}

/// A user's usage in the billing period that contains now: the JSON document of the
/// view `tally.current_usage_document`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub user_id: String,
    pub plan_id: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub practice_sessions: Counter,
    pub assessments: Counter,
    pub learning_plans: Vec<LearningPlanProgress>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SessionWithUsage {
    pub session: Session,
    pub usage: Usage,
}
