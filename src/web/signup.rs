//! Signing up (`GET` and `POST /register`, docs/protocol.md §2 and §7):
//! open to anyone, or with `REGISTRATION=invite` to whoever brings a valid
//! invite code (`/register?invite=CODE` carries it in a hidden field).
//!
//! What it costs an address is in [`RegisterThrottle`]: failed sign-ups
//! count against `REGISTER_MAX_PER_ADDRESS` and successful ones are
//! forgiven, so an office behind one address can all sign up; what bounds
//! the accounts one address makes is a separate budget of successes
//! (`REGISTER_MAX_SUCCESSES_PER_ADDRESS`) when sign-up is open, and a use
//! of a valid code per account when it takes an invite.

use warp::{http::StatusCode, reply::Response, Filter, Rejection};

use super::{
    account::{
        after_sign_in, busy_page, credentials, form_query, too_many_attempts, visitor, Accounts, Credentials,
        FormQuery, Visitor,
    },
    filters::with,
    pages::{page, Field, FormState, RegisterPage},
};
use crate::{
    auth::{invites::InviteCodes, validate_new_account},
    backend::Spend,
    config::Registration,
    error::Error,
    model::{valid_username, User, UserId},
};

/// Who may sign up, and the codes that let them.
#[derive(Clone)]
pub struct Signup {
    pub accounts: Accounts,
    pub registration: Registration,
    pub invites: InviteCodes,
}

/// What a sign-up without a code is told when it takes one.
const NEEDS_INVITE: &str =
    "Signing up here takes an invite. Ask someone who uses palaver here for an invite link, and open it.";

impl Signup {
    fn page(&self, form: FormState, invite: Option<&str>) -> RegisterPage {
        RegisterPage {
            form,
            invite: invite.unwrap_or_default().to_owned(),
            invite_only: self.registration == Registration::Invite,
        }
    }
}

/// GET /register, with `next` and `invite` in the query
pub fn register_form(signup: Signup) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    form_query().and(with(signup)).and_then(|query: FormQuery, signup: Signup| async move {
        let form = FormState::new(String::new(), query.next.as_deref());
        let invite = query.invite.as_deref().map(str::trim).filter(|code| !code.is_empty());
        page(StatusCode::OK, &signup.page(form, invite)).map_err(Rejection::from)
    })
}

/// POST /register
pub fn register(signup: Signup) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    credentials().and(visitor(signup.accounts.sessions.clone())).and(with(signup)).and_then(
        |form: Credentials, visitor: Visitor, signup: Signup| async move {
            handle_register(form, visitor, &signup).await.map_err(Rejection::from)
        },
    )
}

/// The ticket a sign-up holds while its account is made: a code's use or
/// a reserved success, given back if the account is not made after all.
enum Ticket {
    Invite(String),
    Success,
}

async fn handle_register(form: Credentials, visitor: Visitor, signup: &Signup) -> Result<Response, Error> {
    let accounts = &signup.accounts;
    let addr = &visitor.addr;
    let (next, invite) = (form.next, form.invite);
    let refuse = |status, error: &str, field, username: String| {
        let form = FormState::new(username, next.as_deref()).with_error(error, field);
        page(status, &signup.page(form, invite.as_deref()))
    };
    let (Some(username), Some(password)) = (form.username, form.password) else {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Choose a username and a password.",
            Some(Field::Username),
            String::new(),
        );
    };
    let username = username.trim().to_owned();
    if signup.registration == Registration::Invite && invite.is_none() {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, NEEDS_INVITE, None, username);
    }
    if let Err(why) = validate_new_account(&username, password.expose()) {
        let field = if valid_username(&username) { Field::Password } else { Field::Username };
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, why, Some(field), username);
    }
    let again = |username: String| signup.page(FormState::new(username, next.as_deref()), invite.as_deref());
    match accounts.passwords.strength(&password, &username, addr.0).await {
        Ok(Ok(())) => {}
        Ok(Err(weak)) => {
            let mut page_again = again(username);
            page_again.form =
                page_again.form.with_error("Choose a password that is harder to guess.", Some(Field::Password));
            page_again.form.advice = Some(weak.advice);
            return page(StatusCode::UNPROCESSABLE_ENTITY, &page_again);
        }
        Err(busy) => return busy_page(again(username), busy.retry_after),
    }
    // Every attempt that would cost a hash counts, taken or not; one that
    // makes an account is forgiven.
    let attempt = match accounts.registrations.attempt(addr.0).await? {
        Ok(attempt) => attempt,
        Err(retry_after) => return too_many_attempts(again(username), retry_after),
    };
    const TAKEN: &str = "That username is taken. Choose another one.";
    // Checked first to spare the hashing and the ticket; `create` below is
    // what decides.
    if accounts.users.find(&username).await?.is_some() {
        return refuse(StatusCode::CONFLICT, TAKEN, Some(Field::Username), username);
    }
    let ticket = match invite.as_deref() {
        Some(code) if signup.registration == Registration::Invite => {
            let refused = match signup.invites.spend(code).await? {
                Spend::Spent(_) => None,
                Spend::Unknown => Some("That invite code is not valid. Check the link, or ask for a new one."),
                Spend::UsedUp => Some("That invite has been used up. Ask for a new one."),
                Spend::Expired => Some("That invite has expired. Ask for a new one."),
            };
            if let Some(why) = refused {
                return refuse(StatusCode::UNPROCESSABLE_ENTITY, why, None, username);
            }
            Ticket::Invite(code.to_owned())
        }
        _ => {
            if let Err(retry_after) = accounts.registrations.reserve_success(&attempt).await? {
                tracing::warn!(ip = %addr.0, "registrations from one address: success budget used up");
                return too_many_attempts(again(username), retry_after);
            }
            Ticket::Success
        }
    };
    let hash = accounts.passwords.hash(password).await;
    let user = User { id: UserId::new_v4(), name: username };
    let created = accounts.users.create(&user, &hash).await;
    if !matches!(created, Ok(true)) {
        match &ticket {
            Ticket::Invite(code) => signup.invites.give_back(code).await,
            Ticket::Success => {
                if let Err(err) = accounts.registrations.release_success(&attempt).await {
                    tracing::warn!(%err, "a registration's reserved success not given back");
                }
            }
        }
        created?;
        return refuse(StatusCode::CONFLICT, TAKEN, Some(Field::Username), user.name);
    }
    accounts.registrations.succeeded(attempt).await?;
    tracing::info!(user = %user.name, "registered");
    accounts.sessions.sign_in(&visitor.session, user, &visitor.device(), false).await?;
    Ok(after_sign_in(&FormState::new(String::new(), next.as_deref())))
}
