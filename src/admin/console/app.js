// keygate key console: a client of the admin API (/v1/...), signed in with a session cookie.
//
// Rules this file keeps (see README.md in this directory):
// - The CSP forbids inline script and style attributes: build DOM with createElement and
//   textContent, show and hide with the `hidden` attribute or classes, never `style=`.
// - Data from the server is only ever set as textContent or attribute values, never as HTML.
// - The CSRF token lives in a variable of this module; a shown secret lives only in the secret
//   dialog's input and is cleared when the dialog closes. Neither goes to storage or the console.
// - Lists are paged and searched by the server (there may be a million keys): the page never
//   filters or counts rows itself.

const PAGE_SIZE = 50;
const SEARCH_DEBOUNCE_MS = 250;
const EXPIRING_SOON_DAYS = 30;
const DAY_MS = 86400 * 1000;
const SESSION_ENDED = 'Your session has ended. Sign in again.';

// ---------------------------------------------------------------------------------------------
// Small DOM helpers

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/** Makes an element. `props`: class, text, title, dataset, attrs, and plain properties. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'attrs') for (const [a, av] of Object.entries(v)) el.setAttribute(a, av);
    else el[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function show(el, visible = true) {
  el.hidden = !visible;
}

function setText(el, text) {
  el.textContent = text || '';
  el.hidden = !text;
}

function debounce(fn, ms) {
  let timer = 0;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

// ---------------------------------------------------------------------------------------------
// The admin API

class ApiError extends Error {
  constructor(status, code, detail, field) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.field = field;
  }
}

/** Thrown after a call found the session gone; the sign-in screen is already shown. */
class SessionEnded extends Error {}

let csrfToken = null;
let session = null; // {id, role, idle_seconds, expires_at}; never the csrf token or a key

async function api(method, path, body, { signal } = {}) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store', signal };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method !== 'GET' && method !== 'HEAD' && csrfToken) headers['X-CSRF-Token'] = csrfToken;

  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'Cannot reach keygate. Check that it is running, then try again.');
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (resp.ok) return data;

  const p = data && typeof data === 'object' ? data : {};
  const err = new ApiError(
    resp.status,
    p.code || `http_${resp.status}`,
    p.detail || `${resp.status} ${resp.statusText || 'error'}`,
    typeof p.field === 'string' ? p.field : undefined,
  );
  err.retryAfter = resp.headers.get('Retry-After');
  if (session && resp.status === 403 && (err.code === 'session_expired' || err.code === 'key_missing')) {
    endSession(SESSION_ENDED);
    throw new SessionEnded();
  }
  throw err;
}

/** The message for an error of a call that is not tied to a form. */
function describeError(err) {
  switch (err.code) {
    case 'role_insufficient':
      return 'Your admin key has the read role: it cannot change anything.';
    case 'network':
      return err.detail;
    default:
      return err.detail || 'Something went wrong.';
  }
}

function isQuiet(err) {
  return err instanceof SessionEnded || (err && err.name === 'AbortError');
}

// ---------------------------------------------------------------------------------------------
// Time

const rtf = new Intl.RelativeTimeFormat('en', { numeric: 'auto' });
const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const exactFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'long' });
const localZone = Intl.DateTimeFormat().resolvedOptions().timeZone || 'local time';

function relativeTime(date, now = Date.now()) {
  const diff = (date.getTime() - now) / 1000;
  const abs = Math.abs(diff);
  if (abs < 45) return diff <= 0 ? 'just now' : 'in a few seconds';
  if (abs < 45 * 60) return rtf.format(Math.round(diff / 60), 'minute');
  if (abs < 22 * 3600) return rtf.format(Math.round(diff / 3600), 'hour');
  if (abs < 7 * 86400) return rtf.format(Math.round(diff / 86400), 'day');
  if (abs < 30 * 86400) return rtf.format(Math.round(diff / 604800), 'week');
  if (abs < 335 * 86400) return rtf.format(Math.round(diff / 2629800), 'month');
  return rtf.format(Math.round(diff / 31557600), 'year');
}

/** The exact time, local and UTC, for a title attribute. */
function exactTime(date) {
  return `${exactFmt.format(date)} (${toRfc3339(date)})`;
}

function toRfc3339(date) {
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** A <time> element: `text` shown, the exact time in its title. */
function timeEl(iso, text) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h('span', { text: iso });
  return h('time', { dateTime: iso, title: exactTime(d), text: text(d) });
}

/** A relative time ("3 days ago") that keeps itself current (see refreshRelativeTimes). */
function relativeEl(iso, tag = 'time', cls = '') {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h('span', { text: iso });
  return h(tag, { class: cls, dateTime: tag === 'time' ? iso : undefined, title: tag === 'time' ? exactTime(d) : undefined, text: relativeTime(d), dataset: { relative: iso } });
}

// Rows stay on screen for a long time; their "5 minutes ago" should not. Only the text changes,
// so focus and selection are untouched.
function refreshRelativeTimes() {
  const now = Date.now();
  for (const el of $$('[data-relative]')) el.textContent = relativeTime(new Date(el.dataset.relative), now);
}
setInterval(refreshRelativeTimes, 30000);

const pad = (n) => String(n).padStart(2, '0');

// English like the rest of the page: "1,234".
const numFmt = new Intl.NumberFormat('en');
const num = (n) => numFmt.format(Number(n) || 0);
const plural = (n, one, many = `${one}s`) => `${num(n)} ${Number(n) === 1 ? one : many}`;

/** RFC 3339 -> the value of a datetime-local input, in the browser's time zone. */
function toLocalInput(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  let s = `${String(d.getFullYear()).padStart(4, '0')}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}` +
    `T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (d.getSeconds()) s += `:${pad(d.getSeconds())}`;
  return s;
}

/** A datetime-local value, read as local time -> UTC RFC 3339 without fractions; null if bad. */
function fromLocalInput(value) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?$/.exec(value);
  if (!m) return null;
  const d = new Date(2000, 0, 1, 0, 0, 0, 0);
  d.setFullYear(+m[1], +m[2] - 1, +m[3]);
  d.setHours(+m[4], +m[5], +(m[6] || 0), 0);
  if (Number.isNaN(d.getTime())) return null;
  return toRfc3339(d);
}

// ---------------------------------------------------------------------------------------------
// IP addresses, checked as they are typed (the API's IpOrCidr: no leading zeros, no zone)

function isIPv4(s) {
  const parts = s.split('.');
  return parts.length === 4 && parts.every((p) => /^(0|[1-9][0-9]{0,2})$/.test(p) && Number(p) <= 255);
}

function isIPv6(s) {
  if (!s.includes(':') || !/^[0-9A-Fa-f:.]+$/.test(s)) return false;
  let text = s;
  let tailGroups = 0;
  if (text.includes('.')) {
    const cut = text.lastIndexOf(':');
    if (!isIPv4(text.slice(cut + 1))) return false;
    text = text.slice(0, cut + 1);
    tailGroups = 2;
    // "::1.2.3.4" leaves "::", "a:b:c:d:e:f:1.2.3.4" leaves "a:b:c:d:e:f:" (drop that colon).
    if (!text.endsWith('::')) text = text.slice(0, -1);
  }
  const halves = text.split('::');
  if (halves.length > 2) return false;
  const groups = (part) => (part === '' ? [] : part.split(':'));
  const all = halves.flatMap(groups);
  if (!all.every((g) => /^[0-9A-Fa-f]{1,4}$/.test(g))) return false;
  const count = all.length + tailGroups;
  return halves.length === 2 ? count <= 7 : count === 8;
}

function isIpOrCidr(raw) {
  const s = raw.trim();
  const slash = s.indexOf('/');
  const addr = slash === -1 ? s : s.slice(0, slash);
  const prefix = slash === -1 ? null : s.slice(slash + 1);
  const max = isIPv4(addr) ? 32 : isIPv6(addr) ? 128 : -1;
  if (max < 0) return false;
  if (prefix === null) return true;
  return /^(0|[1-9][0-9]{0,2})$/.test(prefix) && Number(prefix) <= max;
}

/**
 * A web origin as keygate reads `allow_origins`: scheme://host[:port], no path, `*.` only as
 * the leftmost label. The server checks it again; this only spares a round trip.
 */
function isOrigin(raw) {
  const m = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/(\*\.)?([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*|\[[0-9A-Fa-f:.]+\])(:([0-9]{1,5}))?$/.exec(raw.trim());
  return !!m && (m[5] === undefined || Number(m[5]) <= 65535);
}

/** The add/remove list of allowed IPs (or, with kind 'origin', web origins) in a dialog. */
class IpEditor {
  constructor(prefix, kind = 'ip', valid = isIpOrCidr) {
    this.valid = valid;
    this.input = $(`#${prefix}-${kind}-input`);
    this.addButton = $(`#${prefix}-${kind}-add`);
    this.list = $(`#${prefix}-${kind}-list`);
    this.error = $(`#${prefix}-${kind}-error`);
    this.emptyHint = $(`#${prefix}-${kind}-hint`);
    this.items = [];
    this.input.addEventListener('input', () => this.check());
    this.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') {
        // Enter adds the address instead of submitting the whole dialog.
        e.preventDefault();
        this.add();
      }
    });
    this.addButton.addEventListener('click', () => this.add());
    this.list.addEventListener('click', (e) => {
      const btn = e.target.closest('button[data-remove]');
      if (!btn) return;
      const li = btn.closest('li');
      const next = li.nextElementSibling || li.previousElementSibling;
      this.items = this.items.filter((c) => c !== li.dataset.cidr);
      this.render();
      const focusTarget = next && this.list.querySelector(`li[data-cidr="${CSS.escape(next.dataset.cidr)}"] button`);
      (focusTarget || this.input).focus();
    });
  }

  set(items) {
    this.items = [...items];
    this.input.value = '';
    this.check();
    this.render();
  }

  /** Marks the input; returns 'empty', 'bad' or 'good'. */
  check() {
    const v = this.input.value.trim();
    const verdict = v === '' ? 'empty' : this.valid(v) ? 'good' : 'bad';
    if (verdict === 'bad') this.input.setAttribute('aria-invalid', 'true');
    else this.input.removeAttribute('aria-invalid');
    show(this.error, verdict === 'bad');
    this.addButton.disabled = verdict !== 'good';
    return verdict;
  }

  add() {
    if (this.check() !== 'good') return false;
    const v = this.input.value.trim();
    if (!this.items.includes(v)) this.items.push(v);
    this.input.value = '';
    this.check();
    this.render();
    this.input.focus();
    return true;
  }

  /** Before submitting: adds a typed but not yet added address; false if it is not valid. */
  flush() {
    const verdict = this.check();
    if (verdict === 'good') return this.add();
    if (verdict === 'bad') {
      this.input.focus();
      return false;
    }
    return true;
  }

  render() {
    this.list.replaceChildren(
      ...this.items.map((cidr) =>
        h('li', { dataset: { cidr } },
          h('span', { class: 'mono', text: cidr }),
          h('button', {
            type: 'button',
            class: 'btn btn-small btn-ghost',
            text: 'Remove',
            dataset: { remove: '' },
            attrs: { 'aria-label': `Remove ${cidr}` },
          }))),
    );
    show(this.list, this.items.length > 0);
    show(this.emptyHint, this.items.length === 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Form errors from problem+json

/** Editing a field takes away the error shown for it. */
function clearErrorOnEdit(form) {
  const clear = (e) => {
    const control = e.target.closest('fieldset.fieldset') || e.target;
    for (const id of (control.getAttribute('aria-describedby') || '').split(/\s+/)) {
      const el = id && document.getElementById(id);
      if (el && el.hasAttribute('data-error-for')) setText(el, '');
    }
    if (control.getAttribute('aria-invalid') === 'true' && !isListInput(control)) {
      control.removeAttribute('aria-invalid');
    }
  };
  form.addEventListener('input', clear);
  form.addEventListener('change', clear);
}

/** The IP and origin inputs keep their own as-you-type state. */
const isListInput = (el) => el.id.endsWith('-ip-input') || el.id.endsWith('-origin-input');

/** `.allow_ips[0]` -> `allow_ips`: the input a problem's field names. */
function fieldName(field) {
  return field.replace(/^\./, '').replace(/\[.*$/, '').split('.')[0];
}

function clearErrors(form) {
  for (const el of $$('[data-error-for]', form)) setText(el, '');
  for (const el of $$('[aria-invalid="true"]', form)) {
    if (!isListInput(el)) el.removeAttribute('aria-invalid');
  }
  const general = $('.form-error', form);
  if (general) setText(general, '');
}

/** The control an error element describes (via aria-describedby). */
function controlFor(form, errorEl) {
  const control = form.querySelector(`[aria-describedby~="${CSS.escape(errorEl.id)}"]`);
  if (control && control.tagName === 'FIELDSET') return control.querySelector('input') || control;
  return control;
}

function showFieldError(form, field, message) {
  const errorEl = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
  if (!errorEl) return false;
  setText(errorEl, message);
  const control = controlFor(form, errorEl);
  if (control) {
    if (control.tagName !== 'FIELDSET') control.setAttribute('aria-invalid', 'true');
    control.focus();
  }
  return true;
}

/** Shows an API error next to the field it names, else at the top of the form. */
function showProblem(form, err) {
  if (isQuiet(err)) return;
  const message = describeError(err);
  if (err.field && showFieldError(form, fieldName(err.field), message)) return;
  const general = $('.form-error', form);
  setText(general, message);
  general.scrollIntoView({ block: 'nearest' });
}

async function withBusy(button, fn) {
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    return await fn();
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}

// ---------------------------------------------------------------------------------------------
// Status line

let statusTimer = 0;

function announce(message, kind = 'ok') {
  const el = $('#status');
  el.classList.toggle('is-error', kind === 'error');
  el.classList.remove('is-faded');
  // Re-set even an unchanged message so that screen readers announce it again.
  el.textContent = '';
  clearTimeout(statusTimer);
  setTimeout(() => {
    el.textContent = message;
  }, 30);
  // The toast fades after a while; its text stays until the next message.
  statusTimer = setTimeout(() => el.classList.add('is-faded'), kind === 'error' ? 12000 : 6000);
}

function announceError(err) {
  if (!isQuiet(err)) announce(describeError(err), 'error');
}

// ---------------------------------------------------------------------------------------------
// Session and screens

const isAdmin = () => session?.role === 'admin';

// Change buttons are taken out of the document for a read session, not just hidden.
const adminOnly = $$('[data-admin-only]').map((el) => ({ el, parent: el.parentNode }));

function applyRole() {
  for (const { el, parent } of adminOnly) {
    if (isAdmin()) {
      if (!el.isConnected) parent.append(el);
    } else {
      el.remove();
    }
  }
  document.body.classList.toggle('role-read', !isAdmin());
}

function startSession(s) {
  session = { id: s.id, role: s.role, idle_seconds: s.idle_seconds, expires_at: s.expires_at };
  csrfToken = s.csrf_token || null;
  $('#who').textContent = `${s.id} · ${s.role === 'admin' ? 'admin' : 'read only'}`;
  $('#who').title = s.expires_at ? `Session ends at the latest ${exactTime(new Date(s.expires_at))}` : '';
  applyRole();
  resetViews();
  show($('#boot'), false);
  show($('#sign-in-screen'), false);
  show($('#app'), true);
  $('#status').textContent = '';
  loadReferenceData();
  route();
}

/** Back to the sign-in screen; drops everything the session showed. */
function endSession(message, { notice = '' } = {}) {
  session = null;
  csrfToken = null;
  for (const d of $$('dialog[open]')) d.close();
  clearSecret();
  resetViews();
  for (const body of ['#keys-body', '#consumers-body', '#audit-body']) $(body).replaceChildren();
  show($('#boot'), false);
  show($('#app'), false);
  show($('#sign-in-screen'), true);
  setText($('#sign-in-error'), message);
  setText($('#sign-in-notice'), notice);
  const input = $('#admin-key');
  input.value = '';
  input.removeAttribute('aria-invalid');
  input.focus();
  document.title = 'Sign in · keygate console';
}

async function boot() {
  try {
    const s = await api('GET', '/v1/session');
    startSession(s);
  } catch (err) {
    // No cookie is a first visit; a cookie the server no longer knows is a session that ended.
    if (err.code === 'key_missing') endSession('');
    else if (err.code === 'session_expired') endSession(SESSION_ENDED);
    else endSession(describeError(err));
  }
}

async function signIn(e) {
  e.preventDefault();
  const input = $('#admin-key');
  const error = $('#sign-in-error');
  setText($('#sign-in-notice'), '');
  const key = input.value.trim();
  if (!key) {
    setText(error, 'Enter an admin key.');
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    return;
  }
  await withBusy($('#sign-in-button'), async () => {
    try {
      const s = await api('POST', '/v1/session', { key });
      input.value = '';
      input.removeAttribute('aria-invalid');
      setText(error, '');
      startSession(s);
    } catch (err) {
      let message;
      if (err.code === 'key_invalid') message = 'That admin key is not valid.';
      else if (err.code === 'too_many_failures') {
        message = err.retryAfter
          ? `Too many wrong keys from this address. Try again in ${err.retryAfter} second${err.retryAfter === '1' ? '' : 's'}.`
          : 'Too many wrong keys from this address. Wait a minute and try again.';
      } else message = describeError(err);
      setText(error, message);
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      input.select();
    }
  });
}

async function signOut() {
  try {
    await api('DELETE', '/v1/session');
  } catch {
    // Already ended, or the call failed: the page forgets the session either way, and a
    // cookie the server still knows runs out at its idle expiry.
  }
  // The next person to sign in starts at the keys, not where this one left off.
  history.replaceState(null, '', location.pathname);
  endSession('', { notice: 'You have signed out.' });
}

// ---------------------------------------------------------------------------------------------
// Reference data: targets and consumers, for checkboxes and selects

let targetNames = null; // null: not known (the list could not be loaded)
let consumerIds = [];
const CONSUMER_SELECT_MAX = 5000;

async function loadReferenceData() {
  await Promise.all([loadTargets(), loadConsumerIds()]);
}

async function loadTargets() {
  try {
    const data = await api('GET', '/v1/targets');
    targetNames = (data?.items || []).map((t) => t.name);
  } catch (err) {
    if (!isQuiet(err)) targetNames = null;
  }
}

/** Consumer ids for the selects; a select is no place for more than a few thousand. */
async function loadConsumerIds() {
  const ids = [];
  let after = null;
  try {
    do {
      const qs = new URLSearchParams({ limit: '1000' });
      if (after) qs.set('after', after);
      const page = await api('GET', `/v1/consumers?${qs}`);
      ids.push(...page.items.map((c) => c.id));
      after = page.next_after;
    } while (after && ids.length < CONSUMER_SELECT_MAX);
  } catch (err) {
    if (isQuiet(err)) return;
  }
  consumerIds = ids;
  fillConsumerSelect($('#keys-filter-consumer'), 'All consumers');
}

/** Refills a consumer <select>, keeping its value (also one not in the list). */
function fillConsumerSelect(select, emptyLabel, extra = []) {
  const current = select.value;
  const ids = [...new Set([...consumerIds, ...extra, current].filter(Boolean))].sort();
  select.replaceChildren(
    h('option', { value: '', text: emptyLabel }),
    ...ids.map((id) => h('option', { value: id, text: id })),
  );
  select.value = current;
}

function fillTargets(fieldset, checked) {
  const list = $('[data-target-list]', fieldset);
  const names = [...new Set([...(targetNames || []), ...checked])];
  if (names.length === 0) {
    list.replaceChildren(h('p', {
      class: 'hint',
      text: targetNames === null ? 'The list of targets could not be loaded.' : 'No targets are configured.',
    }));
    return;
  }
  list.replaceChildren(...names.map((name) => {
    const id = `${fieldset.id}-${name.replace(/[^A-Za-z0-9_-]/g, '_')}`;
    return h('div', { class: 'check' },
      h('input', { type: 'checkbox', id, value: name, checked: checked.includes(name) }),
      h('label', { htmlFor: id, text: name }));
  }));
}

const checkedTargets = (fieldset) => $$('input[type=checkbox]:checked', fieldset).map((i) => i.value);

// ---------------------------------------------------------------------------------------------
// Routing

const VIEWS = ['keys', 'consumers', 'audit'];
let currentView = null;

function route() {
  if (!session) return;
  const name = (location.hash.match(/^#\/(\w+)/) || [])[1];
  const view = VIEWS.includes(name) ? name : 'keys';
  currentView = view;
  for (const v of VIEWS) {
    show($(`#${v}-view`), v === view);
    const link = $(`#nav-${v}`);
    if (v === view) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.title = `${{ keys: 'Keys', consumers: 'Consumers', audit: 'Audit' }[view]} · keygate console`;
  if (view === 'keys') keysList.load();
  else if (view === 'consumers') consumersList.load();
  else auditList.load();
}

function goTo(view) {
  if (location.hash === `#/${view}`) route();
  else location.hash = `#/${view}`;
}

// ---------------------------------------------------------------------------------------------
// A server-paged table: cursor stack for Previous, one request in flight, stale answers dropped

class PagedTable {
  constructor({ name, path, body, wrap, prev, next, info, columns, query, renderRow, empty, noun }) {
    Object.assign(this, { name, path, body, wrap, prev, next, info, columns, query, renderRow, empty, noun });
    this.after = null;
    this.stack = [];
    this.nextAfter = null;
    this.items = [];
    this.loaded = false;
    this.ctrl = null;
    this.focusAfter = null;
    prev.addEventListener('click', () => {
      if (this.stack.length === 0) return;
      this.after = this.stack.pop();
      this.load();
    });
    next.addEventListener('click', () => {
      if (!this.nextAfter) return;
      this.stack.push(this.after);
      this.after = this.nextAfter;
      this.load();
    });
  }

  reset() {
    this.ctrl?.abort();
    this.ctrl = null;
    this.after = null;
    this.stack = [];
    this.nextAfter = null;
    this.items = [];
    this.loaded = false;
    this.loading = false;
    this.focusAfter = null;
  }

  /** From the first page again (the filters changed). */
  restart() {
    this.after = null;
    this.stack = [];
    this.load();
  }

  async load() {
    this.ctrl?.abort();
    const ctrl = new AbortController();
    this.ctrl = ctrl;
    this.loading = true;
    const table = this.wrap.querySelector('table');
    table.setAttribute('aria-busy', 'true');
    this.wrap.classList.add('is-loading');
    if (!this.loaded) this.message(`Loading ${this.noun}…`, 'loading');
    this.prev.disabled = true;
    this.next.disabled = true;
    const qs = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (this.after) qs.set('after', this.after);
    for (const [k, v] of Object.entries(this.query())) if (v !== '' && v !== null && v !== undefined) qs.set(k, v);
    try {
      const page = await api('GET', `${this.path}?${qs}`, undefined, { signal: ctrl.signal });
      if (ctrl !== this.ctrl) return;
      if (page.items.length === 0 && this.stack.length > 0) {
        // The last rows of this page went away (revoked, deleted): show the page before.
        this.after = this.stack.pop();
        this.ctrl = null;
        this.load();
        return;
      }
      this.items = page.items;
      this.nextAfter = page.next_after;
      this.loaded = true;
      this.render();
    } catch (err) {
      if (ctrl !== this.ctrl || isQuiet(err)) return;
      this.items = [];
      this.nextAfter = null;
      this.message(describeError(err), 'error', true);
      this.info.textContent = '';
      this.restoreFocus(true);
    } finally {
      if (ctrl === this.ctrl) {
        this.loading = false;
        table.removeAttribute('aria-busy');
        this.wrap.classList.remove('is-loading');
        this.prev.disabled = this.stack.length === 0;
        this.next.disabled = !this.nextAfter;
      }
    }
  }

  render() {
    if (this.items.length === 0) {
      const [title, sub, action] = this.empty();
      this.message(title, 'empty', false, sub, action);
    } else {
      const labels = $$('thead th', this.wrap).map((th) => th.textContent);
      this.body.replaceChildren(...this.items.map((item) => {
        const row = this.renderRow(item);
        // On a narrow screen each row is a card whose cells are labelled from these (CSS).
        Array.from(row.cells).forEach((td, i) => {
          td.dataset.label = labels[i] || '';
          // One box per cell, so the card's label column holds however many parts a cell has.
          if (!td.classList.contains('cell-name')) td.append(h('div', { class: 'cell-body' }, ...td.childNodes));
        });
        return row;
      }));
    }
    const start = this.stack.length * PAGE_SIZE + 1;
    this.info.textContent = this.items.length
      ? `${start}–${start + this.items.length - 1}${this.nextAfter ? '' : ' (last page)'}`
      : '';
    show(this.prev.parentElement.parentElement, this.stack.length > 0 || !!this.nextAfter || this.items.length > 0);
    this.restoreFocus(true);
  }

  /** One full-width row: loading, empty or error; `action`: {text, run} for a button. */
  message(title, kind, retry = false, sub = '', action = null) {
    if (retry) action = { text: 'Try again', run: () => this.load() };
    const button = action ? h('button', { type: 'button', class: 'btn btn-small', text: action.text }) : null;
    button?.addEventListener('click', action.run);
    const cell = h('td', { colSpan: this.columns, class: `table-message is-${kind}` },
      h('p', { class: 'table-message-title', text: title }),
      sub ? h('p', { class: 'muted', text: sub }) : null,
      button);
    this.body.replaceChildren(h('tr', {}, cell));
  }

  /**
   * After the last dialog closed (or a row action reloaded the page): focus the same button of
   * the same row, or something near if the row is gone. Waits for a load under way (it would
   * replace the row), whose render calls this again with `final`.
   */
  restoreFocus(final = false) {
    const want = this.focusAfter;
    if (!want || document.querySelector('dialog[open]') || (this.loading && !final)) return;
    const row = this.body.querySelector(`tr[${want.attr}="${CSS.escape(want.id)}"]`);
    const sel = want.action === 'usage' ? 'button[data-usage]' : `button[data-action="${want.action}"]`;
    const btn = row && (row.querySelector(sel) || row.querySelector('button'));
    this.focusAfter = null;
    (btn || want.fallback || this.wrap).focus();
  }
}

// ---------------------------------------------------------------------------------------------
// Quotas: "100000/month" on a key or consumer, and its state in the current window

const QUOTA_PERIODS = ['hour', 'day', 'week', 'month'];
const THIS_PERIOD = { hour: 'this hour', day: 'today', week: 'this week', month: 'this month' };

/** "100000/month" -> {n: "100000", period: "month"}; null for anything else. */
function parseQuota(q) {
  const m = /^\s*([0-9]+)\s*\/\s*([a-z]+)\s*$/.exec(q || '');
  return m && QUOTA_PERIODS.includes(m[2]) ? { n: m[1], period: m[2] } : null;
}

/** "100000/month" -> "100,000/month" (as it came when it does not parse). */
function quotaText(q) {
  const p = parseQuota(q);
  return p ? `${num(p.n)}/${p.period}` : String(q);
}

function thisPeriod(view) {
  return THIS_PERIOD[parseQuota(view.quota)?.period] || 'this window';
}

/** The state to show; a quota without a counter yet has used nothing. */
function quotaState(view) {
  if (view.quota_state) return view.quota_state;
  const p = parseQuota(view.quota);
  if (!p) return null;
  const limit = Number(p.n);
  return { used: 0, limit, granted: 0, remaining: limit, window_start: null, window_end: null };
}

/** A badge for a table row when the quota is nearly or wholly spent. */
function quotaBadge(view) {
  const s = view.quota ? view.quota_state : null;
  if (!s) return null;
  const total = s.limit + s.granted;
  const spent = `${num(s.used)} of ${num(total)} used ${thisPeriod(view)}`;
  if (s.remaining <= 0) return badge('quota used up', 'danger', `${spent}: requests get 429 quota_exceeded until it resets`);
  if (total > 0 && s.used / total >= 0.8) return badge(`quota ${Math.floor((s.used / total) * 100)}%`, 'warning', spent);
  return null;
}

/** The consumers table's Quota cell: what was used of how much, and a badge when nearly spent. */
function quotaCell(c) {
  if (!c.quota) return h('td', {}, h('span', { class: 'muted', text: 'none' }));
  const s = quotaState(c);
  const total = s ? s.limit + s.granted : 0;
  return h('td', { class: 'quota-cell' },
    s
      ? h('span', { class: 'nowrap', text: `${num(s.used)} of ${num(total)} ${thisPeriod(c)}`, title: `Quota ${quotaText(c.quota)}` })
      : h('span', { class: 'nowrap', text: quotaText(c.quota) }),
    s ? quotaBadge(c) : null);
}

/** The row button that opens a key's or consumer's usage (every role: it changes nothing). */
function usageButton(label) {
  return h('button', {
    type: 'button',
    class: 'btn btn-small',
    text: 'Usage',
    dataset: { usage: '' },
    attrs: { 'aria-label': `Usage and quota of ${label}` },
  });
}

/** The Quota field of a dialog: a number and a period; empty is no quota. */
class QuotaField {
  constructor(prefix, form) {
    this.input = $(`#${prefix}-quota`);
    this.period = $(`#${prefix}-quota-period`);
    this.form = form;
    this.initial = '';
  }

  set(quota) {
    const p = parseQuota(quota);
    this.input.value = p ? p.n : '';
    this.period.value = p ? p.period : 'month';
    // What the form said when it opened: a save sends the quota only when this changed, so a
    // quota this page cannot show (none today) is never overwritten by accident.
    this.initial = p ? `${p.n}/${p.period}` : '';
  }

  /** "5000/day", "" for none, or undefined with the error shown beside the field. */
  read() {
    const raw = this.input.value.trim();
    if (this.input.validity.badInput || (raw && !/^[0-9]+$/.test(raw))) {
      showFieldError(this.form, 'quota', 'Enter a whole number of requests, or leave it empty for no quota.');
      return undefined;
    }
    return raw ? `${raw.replace(/^0+(?=[0-9])/, '')}/${this.period.value}` : '';
  }

  changed(value) {
    return value !== this.initial;
  }
}

// ---------------------------------------------------------------------------------------------
// Keys view

const keyFilters = {
  search: $('#keys-search'),
  consumer: $('#keys-filter-consumer'),
  status: $('#keys-filter-status'),
  expiring: $('#keys-filter-expiring'),
  unused: $('#keys-filter-unused'),
};

function keysFiltered() {
  return !!(keyFilters.search.value.trim() || keyFilters.consumer.value || keyFilters.status.value ||
    keyFilters.expiring.checked || keyFilters.unused.checked);
}

const keysList = new PagedTable({
  name: 'keys',
  noun: 'keys',
  path: '/v1/keys',
  body: $('#keys-body'),
  wrap: $('#keys-table-wrap'),
  prev: $('#keys-prev'),
  next: $('#keys-next'),
  info: $('#keys-page-info'),
  columns: 7,
  query: () => ({
    q: keyFilters.search.value.trim(),
    consumer: keyFilters.consumer.value,
    status: keyFilters.status.value,
    expiring_within_days: keyFilters.expiring.checked ? String(EXPIRING_SOON_DAYS) : '',
    unused_for_days: keyFilters.unused.checked ? '90' : '',
  }),
  empty: () => (keysFiltered()
    ? ['No keys match.', 'Try another search or clear the filters.', { text: 'Clear filters', run: clearKeyFilters }]
    : ['No keys yet.', isAdmin() ? 'Create a key to give a client access through keygate.' : '']),
  renderRow: keyRow,
});

function badge(text, kind, title) {
  return h('span', { class: `badge badge-${kind}`, text, title });
}

function keyBadges(k, now = Date.now()) {
  const out = [];
  const exp = k.expires_at ? new Date(k.expires_at).getTime() : null;
  const expired = exp !== null && exp <= now;
  if (k.status === 'inactive') out.push(badge('inactive', 'muted', 'Deactivated: requests with it get 403 key_inactive'));
  else if (expired) out.push(badge('expired', 'danger', 'Past its expiry: requests with it get 403 key_expired'));
  else out.push(badge('active', 'success'));
  if (k.status === 'active' && !expired && exp !== null && exp - now <= EXPIRING_SOON_DAYS * DAY_MS) {
    out.push(badge('expiring soon', 'warning', `Expires ${relativeTime(new Date(exp), now)}`));
  }
  const q = quotaBadge(k);
  if (q) out.push(q);
  if (k.managed === false) {
    out.push(badge('config file', 'info', 'Defined in the main config file: change it there'));
  }
  return out;
}

/** One line of the key's restrictions, so a read session sees them without a dialog. */
function keyRestrictions(k) {
  const parts = [];
  if (k.access === 'read-only') parts.push('read-only');
  if (k.targets?.length) parts.push(`targets: ${k.targets.join(', ')}`);
  if (k.allow_ips?.length) parts.push(`IPs: ${k.allow_ips.join(', ')}`);
  if (k.allow_origins?.length) parts.push(`origins: ${k.allow_origins.join(', ')}`);
  if (k.paths?.length) parts.push(`paths: ${k.paths.join(', ')}`);
  if (k.rate_limit) parts.push(k.rate_limit);
  if (k.quota) parts.push(`quota ${quotaText(k.quota)}`);
  return parts;
}

function keyRow(k) {
  const now = Date.now();
  const restrictions = keyRestrictions(k);
  const nameCell = h('td', { class: 'cell-name' },
    k.name ? h('span', { class: 'name', text: k.name }) : h('span', { class: 'name muted', text: 'Unnamed key' }),
    h('span', { class: 'sub mono', text: k.id }),
    restrictions.length
      ? h('span', { class: 'restrictions' }, ...restrictions.map((r) => h('span', { class: 'chip', text: r })))
      : null);

  const keyCell = h('td', {},
    k.prefix
      ? h('code', { class: 'prefix', text: `${k.prefix}…`, title: 'The start of the secret; the rest is never shown' })
      : h('span', { class: 'muted', text: '—', title: 'No prefix recorded for this key' }));

  const consumerCell = h('td', {},
    k.consumer ? h('span', { class: 'mono', text: k.consumer }) : h('span', { class: 'muted', text: '—' }));

  const lastUsed = h('td', { class: 'nowrap' },
    k.last_used_at ? relativeEl(k.last_used_at) : h('span', { class: 'muted', text: 'never' }));

  let expires;
  if (!k.expires_at) {
    expires = h('td', { class: 'nowrap' }, h('span', { class: 'muted', text: 'never' }));
  } else {
    const d = new Date(k.expires_at);
    const soon = d.getTime() - now <= EXPIRING_SOON_DAYS * DAY_MS;
    expires = h('td', { class: 'nowrap' },
      timeEl(k.expires_at, (x) => dateFmt.format(x)),
      relativeEl(k.expires_at, 'span', `sub ${d.getTime() <= now ? 'text-danger' : soon ? 'text-warning' : ''}`));
  }

  const status = h('td', {}, h('span', { class: 'badges' }, ...keyBadges(k, now)));

  const actions = h('td', { class: 'col-actions' });
  const label = k.name ? `${k.name} (${k.id})` : k.id;
  // Not a data-action: it changes nothing, so a read session has it too.
  const usage = usageButton(label);
  if (isAdmin() && k.managed !== false) {
    const btn = (action, text, cls = '') => h('button', {
      type: 'button',
      class: `btn btn-small ${cls}`,
      text,
      dataset: { action },
      attrs: { 'aria-label': `${text} ${label}` },
    });
    actions.append(h('span', { class: 'row-actions' },
      usage,
      btn('edit', 'Edit'),
      btn('rotate', 'Rotate'),
      k.status === 'active' ? btn('deactivate', 'Deactivate') : btn('activate', 'Activate'),
      btn('revoke', 'Revoke', 'btn-danger-quiet')));
  } else {
    actions.append(h('span', { class: 'row-actions' }, usage));
  }

  return h('tr', { dataset: { keyId: k.id } }, nameCell, keyCell, consumerCell, lastUsed, expires, status, actions);
}

function clearKeyFilters() {
  keyFilters.search.value = '';
  keyFilters.consumer.value = '';
  keyFilters.status.value = '';
  keyFilters.expiring.checked = false;
  keyFilters.unused.checked = false;
  keysList.restart();
  keyFilters.search.focus();
}

const debouncedKeySearch = debounce(() => keysList.restart(), SEARCH_DEBOUNCE_MS);
keyFilters.search.addEventListener('input', debouncedKeySearch);
keyFilters.search.addEventListener('keydown', (e) => {
  if (e.key === 'Enter') {
    e.preventDefault();
    debouncedKeySearch.cancel();
    keysList.restart();
  }
});
for (const f of [keyFilters.consumer, keyFilters.status, keyFilters.expiring, keyFilters.unused]) {
  f.addEventListener('change', () => keysList.restart());
}

$('#keys-body').addEventListener('click', (e) => {
  const shown = e.target.closest('button[data-usage]');
  if (shown) {
    const id = shown.closest('tr').dataset.keyId;
    const k = keysList.items.find((x) => x.id === id);
    if (!k) return;
    keysList.focusAfter = { attr: 'data-key-id', id, action: 'usage', fallback: keyFilters.search };
    openUsage('key', k, keysList);
    return;
  }
  const btn = e.target.closest('button[data-action]');
  if (!btn) return;
  const id = btn.closest('tr').dataset.keyId;
  const k = keysList.items.find((x) => x.id === id);
  if (!k) return;
  keysList.focusAfter = { attr: 'data-key-id', id, action: btn.dataset.action, fallback: keyFilters.search };
  switch (btn.dataset.action) {
    case 'edit': openKeyDialog(k); break;
    case 'rotate': openRotate(k); break;
    case 'deactivate': setKeyStatus(k, 'inactive', btn); break;
    case 'activate': setKeyStatus(k, 'active', btn); break;
    case 'revoke': confirmRevoke(k); break;
    default: break;
  }
});

const keyLabel = (k) => (k.name ? `“${k.name}” (${k.id})` : k.id);

async function setKeyStatus(k, status, btn) {
  // The row comes back with the opposite button; keep the focus on it.
  keysList.focusAfter = { attr: 'data-key-id', id: k.id, action: status === 'active' ? 'deactivate' : 'activate' };
  await withBusy(btn, async () => {
    try {
      await api('PATCH', `/v1/keys/${encodeURIComponent(k.id)}`, { status });
      announce(status === 'active' ? 'Key activated.' : 'Key deactivated.');
      await keysList.load();
    } catch (err) {
      announceError(err);
    }
  });
}

function confirmRevoke(k) {
  openConfirm({
    title: 'Revoke key?',
    text: `Revoke ${keyLabel(k)}? Requests with it are refused at once. This cannot be undone.`,
    yes: 'Revoke',
    run: () => api('DELETE', `/v1/keys/${encodeURIComponent(k.id)}`),
    done: (res) => {
      keysList.load();
      if (res?.replacement) {
        announce('Key revoked. keygate made a new default key.');
        showSecret(res.replacement.secret,
          `${keyLabel(k)} was revoked. It was the default key of ${res.replacement.consumer || 'its consumer'}, so keygate made a new one: ${res.replacement.id}.`,
          'New default key');
      } else {
        announce('Key revoked.');
      }
    },
  });
}

// ---------------------------------------------------------------------------------------------
// Key dialog (create and edit)

const keyDialog = $('#key-dialog');
const keyForm = $('#key-form');
const keyIps = new IpEditor('key');
const keyOrigins = new IpEditor('key', 'origin', isOrigin);
const keyQuota = new QuotaField('key', keyForm);
clearErrorOnEdit(keyForm);
let editingKey = null; // the KeyView being edited; null when creating
let keyInitialExpires = '';

$('#key-expires-tz').textContent = localZone;

function openKeyDialog(k = null) {
  editingKey = k;
  keyForm.reset();
  clearErrors(keyForm);
  $('#key-dialog-title').textContent = k ? 'Edit key' : 'Create key';
  setText($('#key-dialog-sub'), k ? k.id : '');
  $('#key-submit').textContent = k ? 'Save' : 'Create';

  const consumer = $('#key-consumer');
  fillConsumerSelect(consumer, 'None', k?.consumer ? [k.consumer] : []);
  consumer.value = k ? k.consumer || '' : keyFilters.consumer.value;
  show($('#key-consumer-hint'), !!k);

  $('#key-name').value = k?.name || '';
  $('#key-status').value = k?.status || 'active';
  const expires = $('#key-expires');
  keyInitialExpires = k?.expires_at ? toLocalInput(k.expires_at) : '';
  // A time with seconds needs step=1, or the input would call it invalid.
  expires.step = /:\d{2}:\d{2}$/.test(keyInitialExpires) ? '1' : '60';
  expires.value = keyInitialExpires;
  fillTargets($('#key-targets'), k?.targets || []);
  keyIps.set(k?.allow_ips || []);
  keyOrigins.set(k?.allow_origins || []);
  $('#key-access').value = k?.access || 'read-write';
  $('#key-paths').value = (k?.paths || []).join('\n');
  $('#key-rate-limit').value = k?.rate_limit || '';
  keyQuota.set(k?.quota);
  keyDialog.showModal();
  $('#key-name').focus();
}

for (const btn of $$('[data-expires-preset]')) {
  btn.addEventListener('click', () => {
    const input = $('#key-expires');
    const preset = btn.dataset.expiresPreset;
    if (preset === 'never') input.value = '';
    else {
      const d = new Date(Date.now() + Number(preset) * DAY_MS);
      d.setSeconds(0, 0);
      input.step = '60';
      input.value = toLocalInput(d.toISOString());
    }
    input.focus();
  });
}

const lines = (text) => text.split('\n').map((l) => l.trim()).filter(Boolean);
const sameList = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const sameSet = (a, b) => sameList([...a].sort(), [...b].sort());

/** The form's values; null (with the error shown) when one cannot be sent. */
function readKeyForm() {
  if (!keyIps.flush() || !keyOrigins.flush()) return null;
  const expiresInput = $('#key-expires');
  let expires = null;
  if (expiresInput.value) {
    expires = fromLocalInput(expiresInput.value);
    if (!expires) {
      showFieldError(keyForm, 'expires_at', 'Enter a date and time, or leave it empty for never.');
      return null;
    }
  } else if (expiresInput.validity.badInput) {
    showFieldError(keyForm, 'expires_at', 'Enter a complete date and time, or clear it for never.');
    return null;
  }
  const quota = keyQuota.read();
  if (quota === undefined) return null;
  return {
    quota,
    name: $('#key-name').value.trim(),
    consumer: $('#key-consumer').value,
    expires_at: expires,
    expiresChanged: expiresInput.value !== keyInitialExpires,
    status: $('#key-status').value,
    targets: checkedTargets($('#key-targets')),
    allow_ips: [...keyIps.items],
    allow_origins: [...keyOrigins.items],
    access: $('#key-access').value,
    paths: lines($('#key-paths').value),
    rate_limit: $('#key-rate-limit').value.trim(),
  };
}

keyForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  clearErrors(keyForm);
  const v = readKeyForm();
  if (!v) return;
  const k = editingKey;
  let body;
  if (!k) {
    body = { status: v.status, access: v.access, targets: v.targets, allow_ips: v.allow_ips, paths: v.paths };
    if (v.allow_origins.length) body.allow_origins = v.allow_origins;
    if (v.name) body.name = v.name;
    if (v.consumer) body.consumer = v.consumer;
    if (v.expires_at) body.expires_at = v.expires_at;
    if (v.rate_limit) body.rate_limit = v.rate_limit;
    if (v.quota) body.quota = v.quota;
  } else {
    // Only what changed, so that a save does not undo someone else's change to other fields.
    body = {};
    if ((v.name || null) !== (k.name || null)) body.name = v.name || null;
    if ((v.consumer || null) !== (k.consumer || null)) body.consumer = v.consumer || null;
    if (v.status !== k.status) body.status = v.status;
    if (v.expiresChanged) body.expires_at = v.expires_at;
    if (!sameSet(v.targets, k.targets || [])) body.targets = v.targets;
    if (!sameList(v.allow_ips, k.allow_ips || [])) body.allow_ips = v.allow_ips; // the whole list
    if (!sameList(v.allow_origins, k.allow_origins || [])) body.allow_origins = v.allow_origins;
    if (v.access !== k.access) body.access = v.access;
    if (!sameList(v.paths, k.paths || [])) body.paths = v.paths;
    if ((v.rate_limit || null) !== (k.rate_limit || null)) body.rate_limit = v.rate_limit || null;
    if (keyQuota.changed(v.quota)) body.quota = v.quota || null;
    if (Object.keys(body).length === 0) {
      keyDialog.close();
      announce('No changes to save.');
      return;
    }
  }
  await withBusy($('#key-submit'), async () => {
    try {
      if (!k) {
        const created = await api('POST', '/v1/keys', body);
        const secret = created.secret;
        delete created.secret;
        keysList.focusAfter = { attr: 'data-key-id', id: created.id, action: 'edit', fallback: $('#create-key') };
        keyDialog.close();
        announce('Key created.');
        keysList.load();
        showSecret(secret, `Key ${keyLabel(created)} was created.`, 'Key created');
      } else {
        await api('PATCH', `/v1/keys/${encodeURIComponent(k.id)}`, body);
        keyDialog.close();
        announce('Key saved.');
        keysList.load();
      }
    } catch (err) {
      showProblem(keyForm, err);
    }
  });
});

$('#key-cancel').addEventListener('click', () => keyDialog.close());
$('#create-key').addEventListener('click', () => {
  keysList.focusAfter = null;
  openKeyDialog(null);
});
keyDialog.addEventListener('close', () => {
  editingKey = null;
  keysList.restoreFocus();
});

// ---------------------------------------------------------------------------------------------
// Rotate

const rotateDialog = $('#rotate-dialog');
let rotatingKey = null;

function openRotate(k) {
  rotatingKey = k;
  setText($('#rotate-error'), '');
  $('#rotate-context').textContent = keyLabel(k);
  $('#rotate-grace').value = '3600';
  rotateDialog.showModal();
  $('#rotate-grace').focus();
}

$('#rotate-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const k = rotatingKey;
  if (!k) return;
  const grace = Number($('#rotate-grace').value);
  await withBusy($('#rotate-submit'), async () => {
    try {
      const res = await api('POST', `/v1/keys/${encodeURIComponent(k.id)}/rotate`, { grace_seconds: grace });
      rotateDialog.close();
      announce('Key rotated.');
      keysList.load();
      const graceText = grace > 0
        ? `The old secret keeps working until ${dateTimeFmt.format(new Date(Date.now() + grace * 1000))}.`
        : 'The old secret no longer works.';
      showSecret(res.secret, `Key ${keyLabel(k)} has a new secret. ${graceText}`, 'Key rotated');
    } catch (err) {
      if (!isQuiet(err)) setText($('#rotate-error'), describeError(err));
    }
  });
});
$('#rotate-cancel').addEventListener('click', () => rotateDialog.close());
rotateDialog.addEventListener('close', () => {
  rotatingKey = null;
  keysList.restoreFocus();
});

// ---------------------------------------------------------------------------------------------
// Confirm

const confirmDialog = $('#confirm-dialog');
let confirmAction = null; // {run: the API call, done: what follows once the dialog closed}
let confirmOwner = null;

function openConfirm({ title, text, yes, run, done, owner = keysList }) {
  confirmAction = { run, done };
  confirmOwner = owner;
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  $('#confirm-yes').textContent = yes;
  setText($('#confirm-error'), '');
  confirmDialog.showModal();
  // The safe choice has the focus.
  $('#confirm-no').focus();
}

$('#confirm-yes').addEventListener('click', async () => {
  const action = confirmAction;
  if (!action) return;
  await withBusy($('#confirm-yes'), async () => {
    let result;
    try {
      result = await action.run();
    } catch (err) {
      // Stays open with the reason, e.g. a consumer that still owns keys.
      if (!isQuiet(err)) setText($('#confirm-error'), describeError(err));
      return;
    }
    confirmAction = null;
    confirmDialog.close();
    action.done(result);
  });
});
$('#confirm-no').addEventListener('click', () => confirmDialog.close());
confirmDialog.addEventListener('close', () => {
  confirmAction = null;
  confirmOwner?.restoreFocus();
});

// ---------------------------------------------------------------------------------------------
// Secret dialog: the only place a secret is ever put, and only until it closes

const secretDialog = $('#secret-dialog');
let secretCopiedTimer = 0;

function showSecret(secret, context, title = 'Copy the new secret') {
  $('#secret-dialog-title').textContent = title;
  $('#secret-context').textContent = context;
  $('#secret-value').value = secret || '';
  $('#secret-copy').textContent = 'Copy';
  $('#secret-copy-status').textContent = '';
  secretDialog.showModal();
  $('#secret-value').focus();
  $('#secret-value').select();
}

function clearSecret() {
  $('#secret-value').value = '';
  $('#secret-context').textContent = '';
  $('#secret-copy-status').textContent = '';
  clearTimeout(secretCopiedTimer);
}

$('#secret-copy').addEventListener('click', async () => {
  const input = $('#secret-value');
  const value = input.value;
  if (!value) return;
  let ok = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(value);
      ok = true;
    }
  } catch {
    ok = false;
  }
  if (!ok) {
    input.focus();
    input.select();
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
  }
  $('#secret-copy').textContent = ok ? 'Copied' : 'Copy';
  $('#secret-copy-status').textContent = ok
    ? 'Copied to the clipboard.'
    : 'Could not copy. The secret is selected: press Ctrl+C (⌘C on a Mac).';
  if (!ok) {
    input.focus();
    input.select();
  }
  clearTimeout(secretCopiedTimer);
  secretCopiedTimer = setTimeout(() => {
    $('#secret-copy').textContent = 'Copy';
  }, 2000);
});

$('#secret-done').addEventListener('click', () => secretDialog.close());
secretDialog.addEventListener('close', () => {
  clearSecret();
  if (currentView === 'consumers') consumersList.restoreFocus();
  else keysList.restoreFocus();
});

// ---------------------------------------------------------------------------------------------
// Consumers view

const consumersList = new PagedTable({
  name: 'consumers',
  noun: 'consumers',
  path: '/v1/consumers',
  body: $('#consumers-body'),
  wrap: $('#consumers-table-wrap'),
  prev: $('#consumers-prev'),
  next: $('#consumers-next'),
  info: $('#consumers-page-info'),
  columns: 8,
  query: () => ({}),
  empty: () => ['No consumers yet.', isAdmin() ? 'A consumer groups keys and shares its restrictions with them.' : ''],
  renderRow: consumerRow,
});

function listCell(items, none) {
  if (!items?.length) return h('td', {}, h('span', { class: 'muted', text: none }));
  return h('td', {}, h('span', { class: 'chips' }, ...items.map((x) => h('span', { class: 'chip mono', text: x }))));
}

function consumerRow(c) {
  const idCell = h('td', { class: 'cell-name' },
    h('span', { class: 'name mono', text: c.id }),
    (c.managed === false || c.default_key)
      ? h('span', { class: 'badges' },
        c.managed === false ? badge('config file', 'info', 'Defined in the main config file: change it there') : null,
        c.default_key ? badge('default key', 'muted', 'keygate keeps a default key for this consumer') : null)
      : null);
  const keys = typeof c.max_keys === 'number' ? `${c.keys} of ${c.max_keys}` : String(c.keys);
  const full = typeof c.max_keys === 'number' && c.keys >= c.max_keys;
  const actions = h('td', { class: 'col-actions' });
  const btn = (action, text, cls = '') => h('button', {
    type: 'button', class: `btn btn-small ${cls}`, text, dataset: { action }, attrs: { 'aria-label': `${text} ${c.id}` },
  });
  const canChange = isAdmin() && c.managed !== false;
  actions.append(h('span', { class: 'row-actions' },
    usageButton(c.id),
    canChange ? btn('edit', 'Edit') : null,
    btn('keys', 'Keys'),
    canChange ? btn('delete', 'Delete', 'btn-danger-quiet') : null));
  return h('tr', { dataset: { consumerId: c.id } },
    idCell,
    h('td', {}, c.name ? c.name : h('span', { class: 'muted', text: '—' })),
    h('td', { class: `nowrap ${full ? 'text-warning' : ''}`, text: keys, title: full ? 'At its max_keys: no more keys can be made' : undefined }),
    listCell(c.allow_ips, 'any'),
    listCell(c.targets, 'all'),
    h('td', { class: 'nowrap' }, c.rate_limit ? c.rate_limit : h('span', { class: 'muted', text: 'none' })),
    quotaCell(c),
    actions);
}

$('#consumers-body').addEventListener('click', (e) => {
  const shown = e.target.closest('button[data-usage]');
  if (shown) {
    const id = shown.closest('tr').dataset.consumerId;
    const c = consumersList.items.find((x) => x.id === id);
    if (!c) return;
    consumersList.focusAfter = { attr: 'data-consumer-id', id, action: 'usage' };
    openUsage('consumer', c, consumersList);
    return;
  }
  const btn = e.target.closest('button[data-action]');
  if (!btn) return;
  const id = btn.closest('tr').dataset.consumerId;
  const c = consumersList.items.find((x) => x.id === id);
  if (!c) return;
  consumersList.focusAfter = { attr: 'data-consumer-id', id, action: btn.dataset.action };
  switch (btn.dataset.action) {
    case 'edit': openConsumerDialog(c); break;
    case 'keys':
      consumersList.focusAfter = null;
      showConsumerKeys(c.id);
      break;
    case 'delete':
      openConfirm({
        title: 'Delete consumer?',
        text: c.keys > 0
          ? `Delete ${c.id}? It owns ${c.keys} key${c.keys === 1 ? '' : 's'}; keygate refuses to delete a consumer that owns keys, so revoke them first.`
          : `Delete ${c.id}? This cannot be undone.`,
        yes: 'Delete',
        owner: consumersList,
        run: () => api('DELETE', `/v1/consumers/${encodeURIComponent(c.id)}`),
        done: () => {
          announce('Consumer deleted.');
          consumersList.load();
          loadConsumerIds();
        },
      });
      break;
    default: break;
  }
});

function showConsumerKeys(id) {
  fillConsumerSelect(keyFilters.consumer, 'All consumers', [id]);
  keyFilters.consumer.value = id;
  keyFilters.search.value = '';
  keyFilters.status.value = '';
  keyFilters.expiring.checked = false;
  keyFilters.unused.checked = false;
  keysList.after = null;
  keysList.stack = [];
  keysList.focusAfter = null;
  goTo('keys');
  keyFilters.consumer.focus();
}

// Consumer dialog

const consumerDialog = $('#consumer-dialog');
const consumerForm = $('#consumer-form');
const consumerIps = new IpEditor('consumer');
const consumerOrigins = new IpEditor('consumer', 'origin', isOrigin);
const consumerQuota = new QuotaField('consumer', consumerForm);
clearErrorOnEdit(consumerForm);
let editingConsumer = null;

function openConsumerDialog(c = null) {
  editingConsumer = c;
  consumerForm.reset();
  clearErrors(consumerForm);
  $('#consumer-dialog-title').textContent = c ? 'Edit consumer' : 'Create consumer';
  $('#consumer-submit').textContent = c ? 'Save' : 'Create';
  const id = $('#consumer-id');
  id.value = c?.id || '';
  id.readOnly = !!c;
  $('#consumer-name').value = c?.name || '';
  $('#consumer-max-keys').value = typeof c?.max_keys === 'number' ? String(c.max_keys) : '';
  $('#consumer-rate-limit').value = c?.rate_limit || '';
  fillTargets($('#consumer-targets'), c?.targets || []);
  consumerIps.set(c?.allow_ips || []);
  consumerOrigins.set(c?.allow_origins || []);
  $('#consumer-default-key').checked = !!c?.default_key;
  consumerQuota.set(c?.quota);
  consumerDialog.showModal();
  (c ? $('#consumer-name') : id).focus();
}

consumerForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  clearErrors(consumerForm);
  if (!consumerIps.flush() || !consumerOrigins.flush()) return;
  const c = editingConsumer;
  const id = $('#consumer-id').value.trim();
  const name = $('#consumer-name').value.trim();
  const maxRaw = $('#consumer-max-keys').value.trim();
  const rate = $('#consumer-rate-limit').value.trim();
  const targets = checkedTargets($('#consumer-targets'));
  const allowIps = [...consumerIps.items];
  const allowOrigins = [...consumerOrigins.items];
  const defaultKey = $('#consumer-default-key').checked;

  if (!c && !/^[A-Za-z0-9._:@-]{1,128}$/.test(id)) {
    showFieldError(consumerForm, 'id', id ? 'Use 1 to 128 letters, digits and . _ : @ -' : 'Enter an ID.');
    return;
  }
  if ($('#consumer-max-keys').validity.badInput || (maxRaw && !/^[0-9]+$/.test(maxRaw))) {
    showFieldError(consumerForm, 'max_keys', 'Enter a whole number, or leave it empty for no limit.');
    return;
  }
  const maxKeys = maxRaw ? Number(maxRaw) : null;
  const quota = consumerQuota.read();
  if (quota === undefined) return;

  let body;
  if (!c) {
    body = { id, targets, allow_ips: allowIps };
    if (allowOrigins.length) body.allow_origins = allowOrigins;
    if (name) body.name = name;
    if (rate) body.rate_limit = rate;
    if (maxKeys !== null) body.max_keys = maxKeys;
    if (quota) body.quota = quota;
    // Sent only when asked for, so a keygate without default keys still takes the body.
    if (defaultKey) body.default_key = true;
  } else {
    body = {};
    if ((name || null) !== (c.name || null)) body.name = name || null;
    if ((rate || null) !== (c.rate_limit || null)) body.rate_limit = rate || null;
    if (maxKeys !== (typeof c.max_keys === 'number' ? c.max_keys : null)) body.max_keys = maxKeys;
    if (!sameSet(targets, c.targets || [])) body.targets = targets;
    if (!sameList(allowIps, c.allow_ips || [])) body.allow_ips = allowIps;
    if (!sameList(allowOrigins, c.allow_origins || [])) body.allow_origins = allowOrigins;
    if (defaultKey !== !!c.default_key) body.default_key = defaultKey;
    if (consumerQuota.changed(quota)) body.quota = quota || null;
    if (Object.keys(body).length === 0) {
      consumerDialog.close();
      announce('No changes to save.');
      return;
    }
  }

  await withBusy($('#consumer-submit'), async () => {
    try {
      if (!c) {
        const created = await api('POST', '/v1/consumers', body);
        const dk = created.default_key_created;
        consumersList.focusAfter = { attr: 'data-consumer-id', id: created.id, action: 'edit' };
        consumerDialog.close();
        announce(dk ? 'Consumer created, with its default key.' : 'Consumer created.');
        consumersList.load();
        loadConsumerIds();
        if (dk) {
          showSecret(dk.secret, `Consumer ${created.id} was created with its default key ${dk.id}.`, 'Default key created');
        }
      } else {
        const saved = await api('PATCH', `/v1/consumers/${encodeURIComponent(c.id)}`, body);
        consumerDialog.close();
        announce('Consumer saved.');
        consumersList.load();
        const dk = saved?.default_key_created;
        if (dk) showSecret(dk.secret, `Consumer ${c.id} now has the default key ${dk.id}.`, 'Default key created');
      }
    } catch (err) {
      showProblem(consumerForm, err);
    }
  });
});

$('#consumer-cancel').addEventListener('click', () => consumerDialog.close());
$('#create-consumer').addEventListener('click', () => {
  consumersList.focusAfter = null;
  openConsumerDialog(null);
});
consumerDialog.addEventListener('close', () => {
  editingConsumer = null;
  consumersList.restoreFocus();
});

// ---------------------------------------------------------------------------------------------
// Usage dialog: a key's or consumer's last 30 UTC days as a chart, and its quota with the
// "customer paid" buttons (reset, grant)

const USAGE_DAYS = 30;
const SVG_NS = 'http://www.w3.org/2000/svg';
// Days are UTC days (what the API counts by), so they are shown in UTC too.
const dayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', timeZone: 'UTC' });
const dayLongFmt = new Intl.DateTimeFormat(undefined, { weekday: 'short', month: 'short', day: 'numeric', timeZone: 'UTC' });

const usageDialog = $('#usage-dialog');
const grantDialog = $('#grant-dialog');
const grantForm = $('#grant-form');
clearErrorOnEdit(grantForm);
// {kind: 'key'|'consumer', id, view, list, ctrl, changed}: what the usage dialog shows.
let detail = null;

/** An SVG element with attributes (never a style attribute: the CSP and app.css see to looks). */
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  for (const c of children) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** The last USAGE_DAYS UTC days, oldest first, as YYYY-MM-DD. */
function lastDays(now = Date.now()) {
  const days = [];
  for (let i = USAGE_DAYS - 1; i >= 0; i -= 1) days.push(new Date(now - i * DAY_MS).toISOString().slice(0, 10));
  return days;
}

const utcDate = (day) => new Date(`${day}T00:00:00Z`);

function detailBase(d) {
  return d.kind === 'key' ? `/v1/keys/${encodeURIComponent(d.id)}` : `/v1/consumers/${encodeURIComponent(d.id)}`;
}

function detailLabel(d) {
  if (d.kind === 'key') return `key ${keyLabel(d.view)}`;
  return `consumer ${d.view.name ? `“${d.view.name}” (${d.id})` : d.id}`;
}

function openUsage(kind, view, list) {
  detail?.ctrl?.abort();
  detail = { kind, id: view.id, view, list, ctrl: null, changed: false, shared: null };
  $('#usage-dialog-title').textContent = kind === 'key' ? 'Key usage and quota' : 'Consumer usage and quota';
  $('#usage-dialog-sub').textContent = kind === 'key' ? keyLabel(view) : (view.name ? `${view.name} (${view.id})` : view.id);
  setText($('#quota-error'), '');
  setText($('#usage-error'), '');
  renderQuota();
  $('#usage-chart').replaceChildren(h('p', { class: 'muted usage-loading', text: 'Loading usage…' }));
  $('#usage-chart').setAttribute('aria-busy', 'true');
  setText($('#usage-summary'), '');
  usageDialog.showModal();
  $('#usage-close').focus();
  loadDetail();
}

/** Fetches the object (for a fresh quota state) and its usage; both render when they come. */
async function loadDetail() {
  const d = detail;
  if (!d) return;
  d.ctrl?.abort();
  const ctrl = new AbortController();
  d.ctrl = ctrl;
  const { signal } = ctrl;
  const base = detailBase(d);
  const days = lastDays();
  const qs = new URLSearchParams({ from: days[0], to: days[days.length - 1], granularity: 'day' });
  $('#usage-chart').setAttribute('aria-busy', 'true');

  const view = api('GET', base, undefined, { signal }).then(async (v) => {
    if (d !== detail || d.ctrl !== ctrl) return;
    d.view = v;
    setText($('#quota-error'), '');
    // A key of a consumer with a quota also spends that one: say so, with its state.
    d.shared = null;
    if (d.kind === 'key' && v.consumer) {
      try {
        const c = await api('GET', `/v1/consumers/${encodeURIComponent(v.consumer)}`, undefined, { signal });
        if (d === detail && c?.quota) d.shared = c;
      } catch (err) {
        if (isQuiet(err)) return;
      }
    }
    if (d === detail) renderQuota();
  }).catch((err) => {
    if (d === detail && !isQuiet(err)) setText($('#quota-error'), describeError(err));
  });

  const usage = api('GET', `${base}/usage?${qs}`, undefined, { signal }).then((u) => {
    if (d === detail && d.ctrl === ctrl) renderUsage(u, days);
  }).catch((err) => {
    if (d !== detail || isQuiet(err)) return;
    $('#usage-chart').replaceChildren();
    $('#usage-chart').removeAttribute('aria-busy');
    setText($('#usage-summary'), '');
    let message = describeError(err);
    if (err.code === 'usage_disabled') message = 'Usage counting is off in this keygate ([usage] enabled = false).';
    else if (err.code === 'not_found') message = 'No usage recorded.';
    setText($('#usage-error'), message);
  });
  await Promise.all([view, usage]);
}

function renderQuota() {
  const d = detail;
  if (!d) return;
  const v = d.view;
  const s = v.quota ? quotaState(v) : null;
  const noun = d.kind === 'key' ? 'key' : 'consumer';
  show($('#quota-state'), !!s);
  show($('#quota-actions'), !!s && isAdmin());
  if (!s) {
    const canEdit = isAdmin() && v.managed !== false;
    setText($('#quota-none'), d.shared
      ? `No quota of its own.${canEdit ? ' Set one with Edit.' : ''}`
      : `No quota on this ${noun}.${canEdit ? ' Set one with Edit.' : ''}`);
  } else {
    setText($('#quota-none'), '');
    const total = s.limit + s.granted;
    const granted = s.granted ? ` (+${num(s.granted)} granted)` : '';
    const text = [`${num(s.used)} used of ${num(s.limit)}${granted} ${thisPeriod(v)}`];
    if (s.window_end) text.push(', resets ', relativeEl(s.window_end));
    text.push('.');
    $('#quota-text').replaceChildren(...text);
    $('#quota-text').title = `Quota ${quotaText(v.quota)}`;
    const meter = $('#quota-meter');
    const max = Math.max(total, 1);
    meter.max = max;
    meter.low = max * 0.8;
    meter.high = max * 0.95;
    meter.optimum = 0;
    meter.value = Math.min(s.used, max);
    meter.textContent = `${num(s.used)} of ${num(total)}`;
    const left = $('#quota-left');
    left.classList.toggle('text-danger', s.remaining <= 0);
    left.textContent = s.remaining > 0
      ? `${num(s.remaining)} left ${thisPeriod(v)}.`
      : 'Used up: requests get 429 quota_exceeded until it resets or more are granted.';
  }
  const c = d.shared;
  if (c) {
    const cs = quotaState(c);
    const spent = cs ? `: ${num(cs.used)} used of ${num(cs.limit + cs.granted)} ${thisPeriod(c)}` : '';
    setText($('#quota-consumer'), `Also counts against consumer ${c.id}'s quota of ${quotaText(c.quota)}, shared by its keys${spent}.`);
  } else {
    setText($('#quota-consumer'), '');
  }
}

/** The chart: one bar per UTC day, allowed below and denied on top, and its text summary. */
function renderUsage(u, days) {
  const chart = $('#usage-chart');
  chart.removeAttribute('aria-busy');
  setText($('#usage-error'), '');
  const byDay = new Map((u.items || []).map((it) => [it.period, it]));
  const rows = days.map((day) => {
    const it = byDay.get(day);
    const requests = it?.requests || 0;
    const allowed = it?.allowed || 0;
    return { day, requests, allowed, denied: it ? (it.denied ?? requests - allowed) : 0 };
  });
  const sum = (f) => rows.reduce((a, r) => a + r[f], 0);
  const total = {
    requests: u.total?.requests ?? sum('requests'),
    allowed: u.total?.allowed ?? sum('allowed'),
    denied: u.total?.denied ?? sum('denied'),
  };
  const summary = $('#usage-summary');
  summary.classList.toggle('usage-empty', total.requests === 0);
  if (total.requests === 0) {
    chart.replaceChildren();
    setText(summary, `No requests in the last ${USAGE_DAYS} days.`);
    return;
  }
  const sentence = `${plural(total.requests, 'request')} in the last ${USAGE_DAYS} days, ` +
    `${total.denied ? num(total.denied) : 'none'} denied.`;
  const busiest = rows.reduce((a, r) => (r.requests > a.requests ? r : a), rows[0]);
  const busy = rows.filter((r) => r.requests > 0).length > 1
    ? ` Busiest day: ${dayLongFmt.format(utcDate(busiest.day))}, ${plural(busiest.requests, 'request')}.`
    : '';
  setText(summary, sentence + busy);

  // Bars in a 10-unit slot per day; the SVG stretches to the box's width (preserveAspectRatio
  // none) and the labels are HTML around it, so they keep their size on a phone.
  const W = USAGE_DAYS * 10;
  const H = 100;
  const max = Math.max(busiest.requests, 1);
  const height = (n) => (n > 0 ? Math.max((n / max) * H, 1.5) : 0);
  const titleId = 'usage-svg-title';
  const descId = 'usage-svg-desc';
  const plot = svg('svg', {
    class: 'usage-svg',
    viewBox: `0 0 ${W} ${H}`,
    preserveAspectRatio: 'none',
    role: 'img',
    'aria-labelledby': titleId,
    'aria-describedby': descId,
    focusable: 'false',
  },
  svg('title', { id: titleId }, `Requests per UTC day, ${dayFmt.format(utcDate(days[0]))} to ${dayFmt.format(utcDate(days[days.length - 1]))}`),
  svg('desc', { id: descId }, summary.textContent),
  svg('line', { class: 'usage-grid', x1: 0, x2: W, y1: 0.5, y2: 0.5, 'vector-effect': 'non-scaling-stroke' }),
  ...rows.map((r, i) => {
    const x = i * 10;
    const ha = height(r.allowed);
    const hd = height(r.denied);
    const label = `${dayLongFmt.format(utcDate(r.day))}: ${plural(r.requests, 'request')}, ${num(r.allowed)} allowed, ${num(r.denied)} denied`;
    return svg('g', { class: 'usage-day', 'data-day': r.day, 'data-requests': r.requests, 'data-allowed': r.allowed, 'data-denied': r.denied },
      svg('title', {}, label),
      svg('rect', { class: 'usage-hit', x, y: 0, width: 10, height: H }),
      ha ? svg('rect', { class: 'usage-bar-allowed', x: x + 1.5, y: H - ha, width: 7, height: ha }) : null,
      hd ? svg('rect', { class: 'usage-bar-denied', x: x + 1.5, y: H - ha - hd, width: 7, height: hd }) : null);
  }),
  svg('line', { class: 'usage-axis', x1: 0, x2: W, y1: H - 0.5, y2: H - 0.5, 'vector-effect': 'non-scaling-stroke' }));

  const mid = days[Math.floor(days.length / 2)];
  chart.replaceChildren(
    h('div', { class: 'usage-plot' },
      h('div', { class: 'usage-y', attrs: { 'aria-hidden': 'true' } },
        h('span', { text: num(max) }),
        h('span', { text: '0' })),
      plot,
      h('div', { class: 'usage-x', attrs: { 'aria-hidden': 'true' } },
        h('span', { text: dayFmt.format(utcDate(days[0])) }),
        h('span', { text: dayFmt.format(utcDate(mid)) }),
        h('span', { text: 'today' }))),
    h('ul', { class: 'usage-legend', attrs: { 'aria-label': 'Totals' } },
      h('li', {}, h('span', { class: 'swatch swatch-allowed', attrs: { 'aria-hidden': 'true' } }),
        'Allowed ', h('strong', { id: 'usage-total-allowed', text: num(total.allowed) })),
      h('li', {}, h('span', { class: 'swatch swatch-denied', attrs: { 'aria-hidden': 'true' } }),
        'Denied ', h('strong', { id: 'usage-total-denied', text: num(total.denied) })),
      u.scope === 'instance_fallback'
        ? h('li', { class: 'hint', text: 'Redis did not answer: these are this instance’s counts only.' })
        : null));
}

/** After a reset or grant: the state the API answered, shown at once. */
function applyQuotaState(d, state) {
  if (!state || typeof state !== 'object') return;
  d.view = { ...d.view, quota_state: state };
  d.changed = true;
  if (d === detail) renderQuota();
}

$('#usage-close').addEventListener('click', () => usageDialog.close());
$('#usage-refresh').addEventListener('click', () => {
  if (detail) withBusy($('#usage-refresh'), loadDetail);
});
usageDialog.addEventListener('close', () => {
  const d = detail;
  detail = null;
  d?.ctrl?.abort();
  if (!d) return;
  // The row's quota badge and numbers change with a reset or grant.
  if (session && d.changed) d.list.load();
  else d.list.restoreFocus();
});

$('#quota-reset').addEventListener('click', () => {
  const d = detail;
  if (!d) return;
  const s = quotaState(d.view);
  const until = s?.window_end ? ` until ${dateTimeFmt.format(new Date(s.window_end))}` : '';
  openConfirm({
    title: 'Reset quota?',
    text: `Reset the quota of ${detailLabel(d)}? What it used ${thisPeriod(d.view)} goes back to 0, so it has its whole limit again${until}.`,
    yes: 'Reset quota',
    owner: d.list,
    run: () => api('POST', `${detailBase(d)}/quota/reset`),
    done: (state) => {
      applyQuotaState(d, state);
      announce('Quota reset.');
      if (d === detail) $('#quota-reset').focus();
    },
  });
});

$('#quota-grant').addEventListener('click', () => {
  const d = detail;
  if (!d) return;
  grantForm.reset();
  clearErrors(grantForm);
  const s = quotaState(d.view);
  const until = s?.window_end ? `, until ${dateTimeFmt.format(new Date(s.window_end))}` : '';
  $('#grant-context').textContent = `More requests for ${detailLabel(d)} ${thisPeriod(d.view)}${until}.`;
  grantDialog.showModal();
  $('#grant-requests').focus();
});

grantForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  clearErrors(grantForm);
  const d = detail;
  if (!d) return;
  const input = $('#grant-requests');
  const raw = input.value.trim();
  if (input.validity.badInput || !/^[0-9]+$/.test(raw) || Number(raw) < 1) {
    showFieldError(grantForm, 'requests', 'Enter a whole number of requests, 1 or more.');
    return;
  }
  const requests = Number(raw);
  await withBusy($('#grant-submit'), async () => {
    try {
      const state = await api('POST', `${detailBase(d)}/quota/grant`, { requests });
      grantDialog.close();
      applyQuotaState(d, state);
      announce(`Granted ${plural(requests, 'more request')}.`);
    } catch (err) {
      showProblem(grantForm, err);
    }
  });
});
$('#grant-cancel').addEventListener('click', () => grantDialog.close());
grantDialog.addEventListener('close', () => {
  if (detail && usageDialog.open) $('#quota-grant').focus();
});

// ---------------------------------------------------------------------------------------------
// Audit view

const auditFilter = $('#audit-filter');

const auditList = new PagedTable({
  name: 'audit',
  noun: 'the audit log',
  path: '/v1/audit',
  body: $('#audit-body'),
  wrap: $('#audit-table-wrap'),
  prev: $('#audit-newer'),
  next: $('#audit-next'),
  info: $('#audit-page-info'),
  columns: 6,
  query: () => ({ object: auditFilter.value.trim() }),
  empty: () => (auditFilter.value.trim()
    ? [`No changes recorded for ${auditFilter.value.trim()}.`, 'The filter takes an exact key or consumer id.']
    : ['No changes recorded yet.', '']),
  renderRow: auditRow,
});

function formatValue(v) {
  if (v === null || v === undefined) return '—';
  if (Array.isArray(v)) return v.length ? v.join(', ') : '(none)';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function changesCell(changes, action) {
  const entries = changes && typeof changes === 'object' ? Object.entries(changes) : [];
  if (entries.length === 0) return h('td', {}, h('span', { class: 'muted', text: '—' }));
  // A creation has nothing before: its values alone read better than a column of "— →".
  const created = /\.create$/.test(action || '');
  return h('td', {}, h('ul', { class: 'changes' }, ...entries.map(([field, ch]) => {
    const isDiff = ch && typeof ch === 'object' && ('before' in ch || 'after' in ch);
    let value;
    if (!isDiff) value = h('span', { text: formatValue(ch) });
    else if (created && (ch.before === null || ch.before === undefined)) {
      value = h('span', { class: 'change-after', text: formatValue(ch.after) });
    } else {
      value = [h('span', { class: 'change-before', text: formatValue(ch.before) }), ' → ',
        h('span', { class: 'change-after', text: formatValue(ch.after) })];
    }
    return h('li', {}, h('span', { class: 'change-field', text: field }), ': ', value);
  })));
}

function auditRow(a) {
  return h('tr', { dataset: { auditId: a.id } },
    h('td', { class: 'nowrap' },
      timeEl(a.time, (d) => dateTimeFmt.format(d)),
      relativeEl(a.time, 'span', 'sub')),
    h('td', { class: 'mono', text: a.actor || '—' }),
    h('td', {}, h('code', { class: `action action-${String(a.action || '').split('.').pop()}`, text: a.action || '—' })),
    h('td', {}, a.object
      ? h('button', {
        type: 'button',
        class: 'link mono',
        text: a.object,
        title: `Show only ${a.object}`,
        dataset: { object: a.object },
      })
      : h('span', { class: 'muted', text: '—' })),
    changesCell(a.changes, a.action),
    h('td', { class: 'mono nowrap', text: a.source_ip || '—' }));
}

const debouncedAudit = debounce(() => auditList.restart(), SEARCH_DEBOUNCE_MS);
auditFilter.addEventListener('input', debouncedAudit);
auditFilter.addEventListener('keydown', (e) => {
  if (e.key === 'Enter') {
    e.preventDefault();
    debouncedAudit.cancel();
    auditList.restart();
  }
});
$('#audit-body').addEventListener('click', (e) => {
  const btn = e.target.closest('button[data-object]');
  if (!btn) return;
  auditFilter.value = btn.dataset.object;
  auditList.restart();
  auditFilter.focus();
});

// ---------------------------------------------------------------------------------------------
// Wiring

function resetViews() {
  for (const list of [keysList, consumersList, auditList]) list.reset();
  keyFilters.search.value = '';
  keyFilters.consumer.value = '';
  keyFilters.status.value = '';
  keyFilters.expiring.checked = false;
  keyFilters.unused.checked = false;
  auditFilter.value = '';
  for (const info of ['#keys-page-info', '#consumers-page-info', '#audit-page-info']) $(info).textContent = '';
}

$('#sign-in').addEventListener('submit', signIn);
$('#sign-out').addEventListener('click', signOut);
window.addEventListener('hashchange', route);

boot();
