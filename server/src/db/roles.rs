//! Users' roles in an organisation (`user_profiles.role`): their rank, who may make a token for
//! whom and who may change whose role, reading a member's role and changing it.
//!
//! The rules here are the ones migration 0012 enforces in the database (`auth.role_rank`, the
//! `api_tokens_role_guard` and `user_profiles_role_guard` triggers): the server checks first to
//! answer with a clear message, the database refuses again whatever the caller sends. Each call
//! runs in the caller's transaction, so a crash leaves a role either changed or as it was.

use tokio_postgres::Transaction;
use uuid::Uuid;

use super::DbError;

/// A user's role in an organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    Admin,
    Member,
    EmergencyContact,
}

impl Role {
    /// The role named `s` as stored (`owner`, `admin`, `member`, `emergency_contact`).
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            "emergency_contact" => Some(Role::EmergencyContact),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::EmergencyContact => "emergency_contact",
        }
    }

    /// owner > admin > member = emergency contact (as `auth.role_rank`).
    pub fn rank(self) -> u8 {
        match self {
            Role::Owner => 3,
            Role::Admin => 2,
            Role::Member | Role::EmergencyContact => 1,
        }
    }

    /// May manage other users (tokens for them, their roles)?
    pub fn is_manager(self) -> bool {
        self.rank() >= Role::Admin.rank()
    }
}

/// Why a token or role change is refused; the text is meant for the caller.
pub type Refusal = String;

/// May `caller` make a user token for a member whose role is `target`?
pub fn may_mint_for(caller: Role, target: Role) -> Result<(), Refusal> {
    if target.rank() > caller.rank() {
        return Err(format!(
            "a user whose role is {} cannot make a token for a user whose role is {}",
            caller.as_str(),
            target.as_str()
        ));
    }
    Ok(())
}

/// May `caller` change the role of another user from `current` to `new`?
pub fn may_change(caller: Role, is_self: bool, current: Role, new: Role) -> Result<(), Refusal> {
    if !caller.is_manager() {
        return Err("only an admin or owner of the organisation may change roles".into());
    }
    if is_self {
        return Err("nobody can change their own role".into());
    }
    if current.rank() > caller.rank() {
        return Err(format!(
            "a user whose role is {} cannot change the role of a user whose role is {}",
            caller.as_str(),
            current.as_str()
        ));
    }
    if new.rank() > caller.rank() {
        return Err(format!(
            "a user whose role is {} cannot grant the role {}",
            caller.as_str(),
            new.as_str()
        ));
    }
    Ok(())
}

/// The role of `user` in the current organisation, if they are a member (any caller may ask).
pub async fn of(tx: &Transaction<'_>, user: Uuid) -> Result<Option<Role>, DbError> {
    let role: Option<String> = tx
        .query_one("SELECT auth.member_role($1)::text", &[&user])
        .await?
        .get(0);
    Ok(role.as_deref().and_then(Role::parse))
}

/// Sets the role of `user` in the current organisation; how many profiles changed (0 or 1).
pub async fn set(tx: &Transaction<'_>, user: Uuid, role: Role) -> Result<u64, DbError> {
    Ok(tx
        .execute(
            "UPDATE user_profiles SET role = $2::text::user_role, updated_at = now() \
             WHERE user_id = $1 AND organization_id = (SELECT auth.org_id())",
            &[&user, &role.as_str()],
        )
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Role; 4] = [
        Role::Owner,
        Role::Admin,
        Role::Member,
        Role::EmergencyContact,
    ];

    #[test]
    fn names_round_trip() {
        for r in ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("Owner"), None);
        assert_eq!(Role::parse("superuser"), None);
    }

    #[test]
    fn nobody_mints_above_their_rank() {
        assert!(may_mint_for(Role::Admin, Role::Owner).is_err());
        assert!(may_mint_for(Role::Member, Role::Admin).is_err());
        assert!(may_mint_for(Role::Admin, Role::Admin).is_ok());
        assert!(may_mint_for(Role::Owner, Role::Owner).is_ok());
        assert!(may_mint_for(Role::Member, Role::EmergencyContact).is_ok());
    }

    #[test]
    fn role_changes_stay_at_or_below_the_caller() {
        assert!(may_change(Role::Owner, false, Role::Member, Role::Owner).is_ok());
        assert!(may_change(Role::Owner, true, Role::Owner, Role::Admin).is_err());
        assert!(may_change(Role::Admin, false, Role::Member, Role::Admin).is_ok());
        assert!(may_change(Role::Admin, false, Role::Admin, Role::Member).is_ok());
        assert!(may_change(Role::Admin, false, Role::Owner, Role::Member).is_err());
        assert!(may_change(Role::Admin, false, Role::Member, Role::Owner).is_err());
        assert!(may_change(Role::Member, false, Role::Member, Role::EmergencyContact).is_err());
    }
}
