"""Your history (/me) and carrying it to another device (/carry): pages over game/store/history.py.

/me shows the cookie's player: days played, streaks, the best caption ever, a score-over-time
chart (server-rendered SVG built from numbers alone, like the reveal's histogram, with a
table of the same numbers for screen readers), and every day played with its rank and
percentile. Only the player's own captions appear, so a running day shows none of anyone
else's.

POST /me/code makes a one-time code; POST /carry redeems one on another device, which then
carries the same player id in its signed session cookie. Both are rate-limited in Redis:
creating per player, redeeming per address (every attempt costs a token, so guessing
codes is as slow as the bucket). A refused or failed redeem changes nothing: the browser
keeps its player and an unused code stays good. The browser's previous player id is kept
in the session, so "switch back" undoes a carry.
"""
from __future__ import annotations

import datetime as dt

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for

from game import history as rules
from game import players
from game.store.history import HistoryStore
from game.web import connlimits
from game.web.pages import current_player

bp = Blueprint("history", __name__)
CREATE_RATE = (1 / 60, 5)  # codes per second and burst, per player: five at once, then one a minute
REDEEM_RATE = (1 / 60, 10)  # attempts per second and burst, per address: ten, then one a minute


def _history() -> HistoryStore:
    hs = current_app.extensions.get("history")
    if hs is None:
        hs = current_app.extensions["history"] = HistoryStore(current_app.extensions["store"])
    return hs


def _same_site() -> None:
    from game.web.security import origin_allowed
    if not origin_allowed(request):
        abort(403, description="forms from other sites are refused")


def _page(code=None, expires=None, error=None, status=200):
    pid = current_player()
    hist = _history().history(pid)
    previous = session.get("previous_player")
    return render_template("history.html", h=hist, chart=score_chart_svg(hist.days),
                           code=rules.format_carry_code(code) if code else None,
                           expires=_clock_time(expires) if expires else None,
                           minutes=rules.CARRY_TTL_S // 60, error=error,
                           can_switch_back=_has_history(previous) and previous != pid), status


def _has_history(pid) -> bool:
    # Offer "switch back" only to a player with something to go back to (a fresh cookie has none).
    return players.is_valid_player_id(pid) and bool(_history().played_days(pid))


def _clock_time(unix_s: float) -> str:
    return dt.datetime.fromtimestamp(unix_s, tz=dt.timezone.utc).strftime("%H:%M UTC")


@bp.route("/me")
def me():
    return _page()


@bp.route("/me/code", methods=["POST"])
def create_code():
    _same_site()
    pid = current_player()
    if not _history().store.take_token(f"carry-new:{pid}", *CREATE_RATE):
        return _page(error="You made several codes just now; wait a minute before making another.", status=429)
    code, expires = _history().create_carry_code(pid)
    return _page(code=code, expires=expires)


@bp.route("/carry", methods=["GET"])
def carry():
    return render_template("carry.html", code=request.args.get("code", ""), error=None,
                           length=rules.CARRY_LENGTH, days=len(_history().played_days(current_player())))


@bp.route("/carry", methods=["POST"])
def redeem():
    _same_site()
    pid, typed = current_player(), request.form.get("code", "")
    address = connlimits.client_address(request)
    hs = _history()
    try:
        if not hs.store.take_token(f"carry-try:{address}", *REDEEM_RATE):
            connlimits.count_refusal(current_app, "carry", "slow_down")
            raise rules.CarryCodeError("slow_down", "too many codes tried from your network; wait a minute "
                                                    "and try again (your code stays good until it expires)")
        new_pid = hs.redeem_carry_code(typed)
    except rules.CarryCodeError as exc:
        status = {"slow_down": 429, "bad_code": 400}.get(exc.code, 404 if exc.code == "unknown_code" else 410)
        resp = render_template("carry.html", code=typed, error=str(exc), length=rules.CARRY_LENGTH,
                               days=len(hs.played_days(pid)))
        return resp, status, ({"Retry-After": "60"} if status == 429 else {})
    if new_pid == pid:
        flash("That code was made in this browser: it already shows that history. Type it on your other device.",
              "info")
        return redirect(url_for("history.me"))
    session["previous_player"], session["player"] = pid, new_pid
    session.permanent = True
    flash("This browser now shows your history from your other device.", "ok")
    return redirect(url_for("history.me"))


@bp.route("/me/switch-back", methods=["POST"])
def switch_back():
    _same_site()
    pid, previous = current_player(), session.get("previous_player")
    if not players.is_valid_player_id(previous) or previous == pid:
        flash("There is no earlier player in this browser to switch back to.", "info")
        return redirect(url_for("history.me"))
    session["player"], session["previous_player"] = previous, pid
    flash("Switched back to this browser's earlier player.", "ok")
    return redirect(url_for("history.me"))


def score_chart_svg(days: list) -> str:
    """An accessible SVG line of daily totals over the days played; numbers only, so safe to inline."""
    if not days:
        return ""
    width, height, pad = 480, 200, 32
    totals = [d.total for d in days]
    lo, hi = min(totals + [0.0]), max(totals)
    if hi - lo < 1e-6:
        hi = lo + 0.01
    first, last = days[0].epoch_day, days[-1].epoch_day
    span = max(1, last - first)

    def xy(d):
        x = pad + (d.epoch_day - first) / span * (width - 2 * pad) if last > first else width / 2
        return x, height - pad - (d.total - lo) / (hi - lo) * (height - 2 * pad)

    points = [xy(d) for d in days]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-labelledby="chart-title chart-desc">',
             f'<title id="chart-title">Your daily totals over {len(days)} day{"s" if len(days) != 1 else ""} '
             f'played</title>',
             f'<desc id="chart-desc">From {days[0].date} to {days[-1].date}; lowest {min(totals):.4f}, highest '
             f'{max(totals):.4f}. The table below lists every day.</desc>']
    parts.append(f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
                 f'stroke="currentColor"/>')
    parts.append(f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="currentColor"/>')
    # A gap in the days breaks the line: days not played are not zeros.
    run = [points[0]]
    for prev, cur, p in zip(days, days[1:], points[1:]):
        if cur.epoch_day != prev.epoch_day + 1:
            parts.append(_polyline(run))
            run = []
        run.append(p)
    parts.append(_polyline(run))
    for d, (x, y) in zip(days, points):
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="currentColor"><title>{d.date}: '
                     f'{d.total:.4f}, rank {d.rank} of {d.players}</title></circle>')
    parts.append(f'<text x="{pad - 4}" y="{pad + 4}" font-size="12" fill="currentColor" '
                 f'text-anchor="end">{hi:.2f}</text>')
    parts.append(f'<text x="{pad - 4}" y="{height - pad}" font-size="12" fill="currentColor" '
                 f'text-anchor="end">{lo:.2f}</text>')
    parts.append(f'<text x="{pad}" y="{height - 8}" font-size="12" fill="currentColor">{days[0].date}</text>')
    if last > first:
        parts.append(f'<text x="{width - pad}" y="{height - 8}" font-size="12" fill="currentColor" '
                     f'text-anchor="end">{days[-1].date}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _polyline(points) -> str:
    if len(points) < 2:
        return ""
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline points="{coords}" fill="none" stroke="currentColor" stroke-width="2"/>'


def init_app(app) -> None:
    app.register_blueprint(bp)
