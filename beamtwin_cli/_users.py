"""``beamtwin users`` and ``beamtwin tokens``: REST API users, their grants and bearer tokens."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from beamtwin_cli._common import CommandError, actor, open_store, when

if TYPE_CHECKING:
    from beamtwin_cli._common import Subparsers


def _add_reason(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", default=None, help="why (kept in the audit log)")


def add_parsers(sub: Subparsers) -> None:
    users = sub.add_parser("users", help="REST API users, their roles and instrument grants")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    uadd = users_sub.add_parser("add", help="add a user")
    uadd.add_argument("name")
    uadd.add_argument("--role", required=True, choices=["viewer", "operator", "auditor", "admin"])
    _add_reason(uadd)
    uadd.set_defaults(func=users_add)
    users_sub.add_parser("list", help="list users and their grants").set_defaults(func=users_list)
    for action, func, text in (
        ("grant", users_grant, "let a user see an instrument"),
        ("revoke", users_revoke, "withdraw a user's grant of an instrument"),
    ):
        grant = users_sub.add_parser(action, help=text)
        grant.add_argument("name")
        grant.add_argument("instrument_id")
        _add_reason(grant)
        grant.set_defaults(func=func)

    tokens = sub.add_parser("tokens", help="REST API bearer tokens")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    tcreate = tokens_sub.add_parser(
        "create", help="create a token for a user and print it (shown this once only)"
    )
    tcreate.add_argument("name")
    tcreate.add_argument("--label", default=None, help="what the token is for")
    tcreate.add_argument(
        "--expires-days", type=float, default=None, help="expire after DAYS (default: never)"
    )
    _add_reason(tcreate)
    tcreate.set_defaults(func=tokens_create)
    tlist = tokens_sub.add_parser("list", help="list a user's tokens (never the secrets)")
    tlist.add_argument("name")
    tlist.set_defaults(func=tokens_list)
    trevoke = tokens_sub.add_parser("revoke", help="revoke a token by its id")
    trevoke.add_argument("token_id", type=int)
    _add_reason(trevoke)
    trevoke.set_defaults(func=tokens_revoke)


# ---------------------------------------------------------------------- users
def users_add(args: argparse.Namespace) -> int:
    import provenance_store as store

    with open_store(args) as conn:
        user = store.add_api_user(
            conn=conn, name=args.name, role=args.role, actor=actor(), reason=args.reason
        )
    print(f"added {user.role} {user.name}; make a token: `beamtwin tokens create {user.name}`")
    return 0


def users_list(args: argparse.Namespace) -> int:
    import provenance_store as store

    with open_store(args) as conn:
        for user in store.list_api_users(conn=conn):
            grants = (
                "(all instruments)"
                if user.role == "admin"
                else ",".join(store.granted_instruments(conn=conn, user_id=user.id)) or "-"
            )
            state = "disabled" if user.disabled else "active"
            print(f"{user.name}\t{user.role}\t{state}\t{grants}")
    return 0


def users_grant(args: argparse.Namespace) -> int:
    import provenance_store as store

    with open_store(args) as conn:
        store.grant_instrument(
            conn=conn,
            name=args.name,
            instrument_id=args.instrument_id,
            actor=actor(),
            reason=args.reason,
        )
    print(f"{args.name} may now see {args.instrument_id}")
    return 0


def users_revoke(args: argparse.Namespace) -> int:
    import provenance_store as store

    with open_store(args) as conn:
        had = store.revoke_instrument(
            conn=conn,
            name=args.name,
            instrument_id=args.instrument_id,
            actor=actor(),
            reason=args.reason,
        )
    print(
        f"{args.name} may no longer see {args.instrument_id}"
        if had
        else f"{args.name} had no grant of {args.instrument_id}"
    )
    return 0


# ---------------------------------------------------------------------- tokens
def tokens_create(args: argparse.Namespace) -> int:
    import provenance_store as store

    expires = None
    if args.expires_days is not None:
        if not args.expires_days > 0:
            raise CommandError("--expires-days must be positive")
        expires = datetime.now(UTC) + timedelta(days=args.expires_days)
    with open_store(args) as conn:
        new = store.create_api_token(
            conn=conn,
            name=args.name,
            label=args.label,
            expires_at=expires,
            actor=actor(),
            reason=args.reason,
        )
    print(new.token)
    print(
        f"token {new.record.id} of {args.name}, expires {when(new.record.expires_at)}; "
        "it is shown this once only (the store keeps only its hash)",
        file=sys.stderr,
    )
    return 0


def tokens_list(args: argparse.Namespace) -> int:
    import provenance_store as store

    with open_store(args) as conn:
        tokens = store.list_api_tokens(conn=conn, name=args.name)
    for t in tokens:
        print(
            f"{t.id}\t{t.label or '-'}\tcreated {when(t.created_at)}\t"
            f"expires {when(t.expires_at)}\trevoked {when(t.revoked_at)}\t"
            f"last used {when(t.last_used_at)}"
        )
    return 0


def tokens_revoke(args: argparse.Namespace) -> int:
    import provenance_store as store

    with open_store(args) as conn:
        token = store.revoke_api_token(
            conn=conn, token_id=args.token_id, actor=actor(), reason=args.reason
        )
    print(f"revoked token {token.id} of {token.user_name}")
    return 0
