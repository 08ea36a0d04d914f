'use strict';
// The selfinstruct report page. One script for both modes: the single file (all records in the
// JSON block, filtered and sorted here) and --serve (the same questions asked of /api/*).
// Record text is only ever put in the page with textContent or text nodes, never parsed as HTML.
(() => {
  const BOOT = JSON.parse(document.getElementById('si-data').textContent);
  const SERVE = BOOT.meta.mode === 'serve';
  const PAGE = 200; // rows per page asked of the server
  const ROW = 30; // px, must match --row in the CSS

  // ---------------------------------------------------------------- small helpers
  function h(tag, props, ...kids) {
    const e = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v == null || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = v;
        else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid == null || kid === false) continue;
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }
  const SVGNS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...kids) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v != null) e.setAttribute(k, String(v));
    for (const kid of kids.flat(Infinity)) {
      if (kid == null || kid === false) continue;
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }
  // replaceChildren with nested arrays and gaps (null) flattened away.
  function setKids(el, ...kids) {
    el.replaceChildren(...kids.flat(Infinity).filter((k) => k != null && k !== false));
  }
  const nf = new Intl.NumberFormat('en-US');
  const fmt = (v) => (v == null || Number.isNaN(v) ? '–' : nf.format(Math.round(v * 10) / 10));
  const fmt3 = (v) => (v == null || Number.isNaN(v) ? '–' : Number(v).toFixed(3));
  const pct = (v) => (v == null || Number.isNaN(v) ? '–' : (100 * v).toFixed(1) + '%');
  const hashRef = (ref) => '#' + encodeURIComponent(ref);
  // The judge's three checks: bits 1 valid, 2 input, 4 output (null: not judged).
  const CHECK_NAMES = ['valid', 'input', 'output'];
  const checkMarks = (bits) => (bits == null ? '' : CHECK_NAMES.map((_, n) => ((bits >> n) & 1 ? '✓' : '✗')).join(''));
  const checkWords = (bits) => (bits == null ? '' : CHECK_NAMES.map((c, n) => c + ((bits >> n) & 1 ? ' ✓' : ' ✗')).join(' · '));
  function debounce(fn, ms) {
    let t = 0;
    return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
  }
  function toast(message) {
    const t = h('div', { class: 'toast', role: 'status', text: message });
    document.body.append(t);
    setTimeout(() => t.remove(), 2600);
  }
  function saveBlob(name, parts) {
    const url = URL.createObjectURL(new Blob(parts, { type: 'application/x-ndjson' }));
    const a = h('a', { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }
  function saveUrl(name, url) {
    const a = h('a', { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
  }
  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (e) {
      // file:// pages and old browsers: the selection route still works.
      const ta = h('textarea', { class: 'offscreen' });
      ta.value = text;
      document.body.append(ta);
      ta.select();
      let ok = false;
      try { ok = document.execCommand('copy'); } catch (e2) { ok = false; }
      ta.remove();
      return ok;
    }
  }
  // Search terms as the server splits them: words or "quoted phrases", all must occur.
  function terms(q) {
    const out = [];
    const re = /"([^"]+)"|(\S+)/g;
    let m;
    while ((m = re.exec(q || ''))) {
      const t = (m[1] || m[2]).toLowerCase().replace(/[\x00\x1f]/g, '');
      if (t) out.push(t);
    }
    return out;
  }

  // Words of the ROUGE-L tokenizer (lower-case a-z0-9 runs), with where they are in the text,
  // and the longest common subsequence of two texts, to mark what made a pair similar.
  function tokens(text) {
    const out = [];
    const re = /[A-Za-z0-9]+/g;
    let m;
    while ((m = re.exec(text || '')) && out.length < 600) out.push([m.index, m.index + m[0].length, m[0].toLowerCase()]);
    return out;
  }
  function lcsMarks(a, b) {
    const n = a.length, m = b.length;
    const dp = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        dp[i][j] = a[i][2] === b[j][2] ? dp[i + 1][j + 1] + 1 : Math.max(dp[i + 1][j], dp[i][j + 1]);
      }
    }
    const ma = new Set(), mb = new Set();
    let i = 0, j = 0;
    while (i < n && j < m) {
      if (a[i][2] === b[j][2]) { ma.add(i); mb.add(j); i++; j++; }
      else if (dp[i + 1][j] >= dp[i][j + 1]) i++;
      else j++;
    }
    return [ma, mb];
  }
  function marked(text, toks, marks) {
    const pre = h('pre', { class: 'text' });
    let at = 0;
    toks.forEach(([a, b], k) => {
      if (!marks.has(k)) return;
      if (a > at) pre.append(document.createTextNode(text.slice(at, a)));
      pre.append(h('mark', { text: text.slice(a, b) }));
      at = b;
    });
    pre.append(document.createTextNode(text.slice(at)));
    return pre;
  }

  // ---------------------------------------------------------------- flags
  // Single file: kept in this browser (localStorage, per run). --serve: flags.jsonl in the run.
  class LocalFlags {
    constructor(runKey) {
      this.key = 'selfinstruct-flags:' + runKey;
      this.map = new Map();
      try {
        const raw = window.localStorage.getItem(this.key);
        if (raw) for (const [ref, f] of Object.entries(JSON.parse(raw))) this.map.set(ref, f);
      } catch (e) { /* storage off: flags last until the page closes */ }
    }
    async load() { return this; }
    has(ref) { return this.map.has(ref); }
    get(ref) { return this.map.get(ref); }
    get size() { return this.map.size; }
    async set(ref, kind, flagged, note) {
      if (flagged) this.map.set(ref, { ref, kind, note: note || '', at: new Date().toISOString().replace(/\.\d+Z$/, 'Z') });
      else this.map.delete(ref);
      try { window.localStorage.setItem(this.key, JSON.stringify(Object.fromEntries(this.map))); } catch (e) { /* see above */ }
    }
  }
  class RemoteFlags {
    constructor(api) { this.api = api; this.map = new Map(); }
    async load() {
      const all = await this.api('/api/flags');
      this.map = new Map(Object.entries(all));
      return this;
    }
    has(ref) { return this.map.has(ref); }
    get(ref) { return this.map.get(ref); }
    get size() { return this.map.size; }
    async set(ref, kind, flagged, note) {
      const line = await this.api('/api/flags', { ref, kind, flagged, note: note || '' });
      if (flagged) this.map.set(ref, line); else this.map.delete(ref);
    }
  }

  // ---------------------------------------------------------------- data sources
  // Both answer: list(view, params) -> {total, facets, get(i), ensure(a, b), locate(key)},
  // record(kind, key), lookup(ref), stats(), and the downloads.
  class LocalSource {
    constructor(boot) {
      this.meta = boot.meta;
      this._stats = boot.stats;
      this.A = boot.acc;
      this.R = boot.rej;
      this.S = boot.seeds;
      this.D = boot.dict;
      this.nA = this.A.id.length;
      this.nR = this.R.n.length;
      this.idIndex = new Map();
      this.A.id.forEach((id, i) => { if (id && !this.idIndex.has(id)) this.idIndex.set(id, i); });
      this.rejByN = new Map();
      this.R.n.forEach((n, i) => this.rejByN.set(n, i));
      this.seedById = new Map();
      this.S.id.forEach((id, i) => this.seedById.set(id, i));
      this.nearCode = this.D.reason.indexOf('near_duplicate');
      this.hays = {};
      this.flags = new LocalFlags(this.meta.run_key);
    }
    async stats() { return this._stats; }
    async refreshMeta() { return this.meta; }
    table(side) { return side === 'a' ? this.A : this.R; }
    // Lower-cased text per row, built on the first search (keeps the page quick to open).
    hay(side) {
      if (!this.hays[side]) {
        const T = this.table(side);
        const n = T.instruction.length;
        const out = new Array(n);
        for (let i = 0; i < n; i++) out[i] = (T.instruction[i] + '\x1f' + T.input[i] + '\x1f' + T.output[i]).toLowerCase();
        this.hays[side] = out;
      }
      return this.hays[side];
    }
    ref(side, i) { return side === 'a' ? this.A.id[i] || 'a' + i : 'rejected-' + this.R.n[i]; }
    async list(view, p) {
      const side = view === 'accepted' || view === 'near-accepted' ? 'a' : 'r';
      const T = this.table(side);
      const n = side === 'a' ? this.nA : this.nR;
      const ts = terms(p.q);
      const hay = ts.length ? this.hay(side) : null;
      let rows = [];
      for (let i = 0; i < n; i++) {
        if (hay) {
          const t = hay[i];
          let ok = true;
          for (const term of ts) if (!t.includes(term)) { ok = false; break; }
          if (!ok) continue;
        }
        if (p.flagged && !this.flags.has(this.ref(side, i))) continue;
        if (view === 'near-rejected' && T.reason[i] !== this.nearCode) continue;
        if (view === 'near-accepted' && T.near[i] == null && !(i in T.nearRaw)) continue;
        rows.push(i);
      }
      let facets = null;
      if (view === 'rejected') {
        facets = {};
        for (const i of rows) {
          const r = this.D.reason[T.reason[i]];
          facets[r] = (facets[r] || 0) + 1;
        }
        if (p.reason) {
          const code = this.D.reason.indexOf(p.reason);
          rows = rows.filter((i) => T.reason[i] === code);
        }
      }
      const col = { iw: T.iw, ow: T.ow, rouge: T.rouge, score: T.score }[p.sort];
      if (col) {
        const sign = p.desc ? -1 : 1;
        rows.sort((a, b) => {
          const x = col[a], y = col[b];
          const xm = x == null, ym = y == null;
          if (xm || ym) return xm === ym ? a - b : xm ? 1 : -1; // unknown values last
          return sign * (x - y) || a - b;
        });
      } else if (p.desc) rows.reverse();
      const self = this;
      return {
        total: rows.length,
        facets,
        rows,
        get: (i) => self.row(view, rows[i]),
        ensure: () => null,
        locate: async (key) => rows.indexOf(key),
      };
    }
    neighbour(side, i, full) {
      const T = this.table(side);
      const k = T.near[i];
      if (k != null && k >= 0) {
        const A = this.A;
        return { kind: 'a', key: k, id: A.id[k], instruction: full ? A.instruction[k] : undefined, ins: A.instruction[k], input: A.input[k], output: A.output[k] };
      }
      if (k != null) {
        const j = -1 - k, S = this.S;
        return { kind: 's', key: j, id: S.id[j], instruction: S.instruction[j], ins: S.instruction[j], input: S.input[j], output: S.output[j] };
      }
      const raw = T.nearRaw[i];
      if (raw) return { kind: 't', id: raw[0] || '', instruction: raw[1] || '', ins: raw[1] || '' };
      return null;
    }
    row(view, i) {
      if (i == null) return undefined;
      if (view === 'accepted' || view === 'near-accepted') {
        const A = this.A;
        const r = { k: i, id: A.id[i], ins: A.instruction[i], iw: A.iw[i], xw: A.xw[i], ow: A.ow[i], r: A.rouge[i], s: A.score ? A.score[i] : null, c: A.checks ? A.checks[i] : null };
        if (view === 'near-accepted') r.other = this.neighbour('a', i);
        return r;
      }
      const R = this.R;
      const r = {
        k: i, n: R.n[i], reason: this.D.reason[R.reason[i]], ins: R.instruction[i],
        out: R.instruction[i] ? '' : R.output[i], detail: R.detail[i], r: R.rouge[i], iw: R.iw[i], ow: R.ow[i],
      };
      if (view === 'near-rejected') r.other = this.neighbour('r', i);
      return r;
    }
    acceptedJson(i) {
      const A = this.A, D = this.D, near = this.neighbour('a', i);
      return clean({
        id: A.id[i], instruction: A.instruction[i], input: A.input[i], output: A.output[i],
        most_similar_instruction: near ? near.ins : '', rouge_l: A.rouge[i], nearest_id: near && near.id ? near.id : null,
        request: A.request[i], model: D.model[A.model[i]], endpoint: D.endpoint[A.endpoint[i]],
        finish_reason: D.finish[A.finish[i]], created: A.created[i], settings: D.settings[A.settings[i]],
        judge_score: A.score ? A.score[i] : null,
        judge_checks: A.checks && A.checks[i] != null ? Object.fromEntries(CHECK_NAMES.map((c, n) => [c, !!((A.checks[i] >> n) & 1)])) : null,
        judge_reasoning: A.why ? A.why[i] : null,
      });
    }
    rejectedJson(i) {
      const R = this.R, D = this.D, near = this.neighbour('r', i);
      return clean({
        reason: D.reason[R.reason[i]], detail: R.detail[i], instruction: R.instruction[i], input: R.input[i],
        output: R.output[i], request: R.request[i], rouge_l: R.rouge[i],
        most_similar_instruction: near ? near.ins : null, nearest_id: near && near.id ? near.id : null,
        created: R.created[i] || null, settings: D.settings[R.settings[i]],
      });
    }
    async record(kind, key) {
      if (kind === 'a' && key >= 0 && key < this.nA) {
        const A = this.A;
        return { kind, key, ref: this.ref('a', key), record: this.acceptedJson(key), words: [A.iw[key], A.xw[key], A.ow[key]], nearest: this.neighbour('a', key, true) };
      }
      if (kind === 'r' && key >= 0 && key < this.nR) {
        return { kind, key, ref: this.ref('r', key), record: this.rejectedJson(key), words: [this.R.iw[key], null, this.R.ow[key]], nearest: this.neighbour('r', key, true) };
      }
      if (kind === 's' && key >= 0 && key < this.S.id.length) {
        const S = this.S;
        return { kind, key, ref: S.id[key], record: { id: S.id[key], instruction: S.instruction[key], input: S.input[key], output: S.output[key] }, words: null, nearest: null };
      }
      throw new Error('no such record');
    }
    async lookup(ref) {
      if (this.idIndex.has(ref)) return { kind: 'a', key: this.idIndex.get(ref) };
      const m = /^rejected-(\d+)$/.exec(ref);
      if (m && this.rejByN.has(+m[1])) return { kind: 'r', key: this.rejByN.get(+m[1]) };
      const a = /^a(\d+)$/.exec(ref);
      if (a && +a[1] < this.nA) return { kind: 'a', key: +a[1] };
      if (this.seedById.has(ref)) return { kind: 's', key: this.seedById.get(ref) };
      return null;
    }
    download(view, p, result) {
      const lines = [];
      for (const i of result.rows) {
        let obj;
        if (view === 'accepted') obj = this.acceptedJson(i);
        else if (view === 'rejected') obj = this.rejectedJson(i);
        else {
          const side = view === 'near-accepted' ? 'a' : 'r';
          const rec = side === 'a' ? this.acceptedJson(i) : this.rejectedJson(i);
          const nb = this.neighbour(side, i, true);
          obj = { rouge_l: rec.rouge_l, candidate: rec, nearest: nb && clean({ id: nb.id, instruction: nb.ins, input: nb.input, output: nb.output }) };
        }
        lines.push(JSON.stringify(obj) + '\n');
      }
      saveBlob(view + '.jsonl', lines);
    }
    async downloadFlags() {
      const lines = [];
      for (const [ref, f] of this.flags.map) {
        const where = await this.lookup(ref);
        const rec = where ? (await this.record(where.kind, where.key)).record : null;
        lines.push(JSON.stringify({ ref, kind: f.kind, note: f.note || '', flagged_at: f.at, record: rec }) + '\n');
      }
      saveBlob('flags.jsonl', lines);
    }
  }
  function clean(obj) {
    for (const k of Object.keys(obj)) if (obj[k] == null) delete obj[k];
    return obj;
  }

  class RemoteSource {
    constructor(boot) {
      this.meta = boot.meta;
      this.flags = new RemoteFlags((path, body) => this.api(path, body));
    }
    async api(path, body) {
      const init = body === undefined ? {} : {
        method: 'POST', body: JSON.stringify(body),
        headers: { 'Content-Type': 'application/json', 'X-Selfinstruct': '1' },
      };
      const r = await fetch(path, init);
      const data = await r.json();
      if (!r.ok) throw new Error(data && data.error ? data.error : 'HTTP ' + r.status);
      return data;
    }
    async refreshMeta() {
      this.meta = await this.api('/api/meta');
      return this.meta;
    }
    async stats() { return this.api('/api/stats'); }
    query(view, p) {
      const q = new URLSearchParams({ view, q: p.q || '', sort: p.sort || 'order', desc: p.desc ? '1' : '0', flagged: p.flagged ? '1' : '0', reason: p.reason || '' });
      return q.toString();
    }
    async list(view, p) {
      const qs = this.query(view, p);
      const first = await this.api('/api/list?' + qs + '&offset=0&limit=' + PAGE);
      const pages = new Map([[0, first.rows]]);
      const loading = new Map();
      const fetchPage = (k) => {
        if (!loading.has(k)) {
          loading.set(k, this.api('/api/list?' + qs + '&offset=' + k * PAGE + '&limit=' + PAGE).then((r) => { pages.set(k, r.rows); }));
        }
        return loading.get(k);
      };
      return {
        total: first.total,
        facets: first.facets,
        get: (i) => { const pg = pages.get(Math.floor(i / PAGE)); return pg ? pg[i % PAGE] : undefined; },
        ensure: (a, b) => {
          const wants = [];
          for (let k = Math.floor(a / PAGE); k <= Math.floor(Math.max(a, b - 1) / PAGE); k++) if (!pages.has(k)) wants.push(fetchPage(k));
          return wants.length ? Promise.all(wants) : null;
        },
        locate: async (key) => (await this.api('/api/list?' + qs + '&offset=0&limit=0&locate=' + key)).position,
      };
    }
    async record(kind, key) { return this.api('/api/record?kind=' + kind + '&key=' + key); }
    async lookup(ref) { return this.api('/api/lookup?ref=' + encodeURIComponent(ref)); }
    download(view, p) { saveUrl(view + '.jsonl', '/api/export?' + this.query(view, p)); }
    async downloadFlags() { saveUrl('flags.jsonl', '/api/flags?download=1'); }
  }

  // ---------------------------------------------------------------- virtual list
  // Only the rows in view exist in the DOM (a few dozen, whatever the total). Past the height a
  // browser can scroll, positions are scaled so a million rows still fit.
  class VList {
    constructor(build, fill, onPick) {
      this.build = build;
      this.fill = fill;
      this.onPick = onPick;
      this.el = h('div', { class: 'vlist', tabindex: '0' });
      this.spacer = h('div', { class: 'vspacer' });
      this.el.append(this.spacer);
      this.pool = [];
      this.result = null;
      this.selected = -1;
      this.scale = 1;
      this.el.addEventListener('scroll', () => this.schedule());
      if (window.ResizeObserver) new ResizeObserver(() => this.schedule()).observe(this.el);
      this.el.addEventListener('keydown', (e) => {
        const page = Math.max(1, Math.floor(this.el.clientHeight / ROW) - 1);
        const step = { ArrowDown: 1, ArrowUp: -1, j: 1, k: -1, PageDown: page, PageUp: -page }[e.key];
        if (step && this.result && this.result.total) {
          e.preventDefault();
          this.pick(Math.min(this.result.total - 1, Math.max(0, this.selected + step)), true);
        }
      });
    }
    set(result, selected, keepScroll) {
      const top = this.el.scrollTop;
      this.result = result;
      this.selected = selected == null ? -1 : selected;
      const full = result.total * ROW;
      this.scale = Math.max(1, full / 8e6);
      this.spacer.style.height = Math.ceil(full / this.scale) + 'px';
      this.el.scrollTop = keepScroll ? top : 0;
      this.render();
    }
    schedule() {
      if (!this.raf) this.raf = requestAnimationFrame(() => { this.raf = 0; this.render(); });
    }
    render() {
      const r = this.result;
      if (!r) return;
      const top = this.el.scrollTop;
      const virtualTop = top * this.scale;
      const height = this.el.clientHeight || 600;
      const first = Math.max(0, Math.floor(virtualTop / ROW) - 4);
      const last = Math.min(r.total, Math.ceil((virtualTop + height) / ROW) + 4);
      while (this.pool.length < last - first) {
        const row = this.build();
        row.addEventListener('click', () => this.pick(+row.dataset.i));
        this.spacer.append(row);
        this.pool.push(row);
      }
      const pending = r.ensure(first, last);
      if (pending) pending.then(() => { if (this.result === r) this.render(); }).catch((e) => toast(String(e.message || e)));
      for (let j = 0; j < this.pool.length; j++) {
        const row = this.pool[j];
        const i = first + j;
        if (i >= last) { row.hidden = true; continue; }
        row.hidden = false;
        row.dataset.i = String(i);
        row.style.transform = 'translateY(' + (top + i * ROW - virtualTop) + 'px)';
        row.classList.toggle('sel', i === this.selected);
        this.fill(row, r.get(i), i);
      }
    }
    reveal(i) {
      const y = (i * ROW) / this.scale;
      if (y < this.el.scrollTop || y + ROW > this.el.scrollTop + this.el.clientHeight) {
        this.el.scrollTop = Math.max(0, y - this.el.clientHeight / 3);
      }
    }
    pick(i, reveal) {
      if (!this.result || i < 0 || i >= this.result.total) return;
      this.selected = i;
      if (reveal) this.reveal(i);
      this.render();
      const item = this.result.get(i);
      if (item) this.onPick(item, i);
    }
  }

  // ---------------------------------------------------------------- app state
  const src = SERVE ? new RemoteSource(BOOT) : new LocalSource(BOOT);
  const app = document.getElementById('app');

  // Everything below needs the run's meta (--serve asks the server for it first).
  function build() {
  const state = {
    tab: 'accepted',
    accepted: { q: '', sort: 'order', desc: false, flagged: false },
    rejected: { q: '', sort: 'order', desc: false, flagged: false, reason: '' },
    near: { q: '', sort: 'rouge', desc: true, mode: 'rejected' },
  };
  const views = {};
  let statsDrawn = false;

  // ---------------------------------------------------------------- header
  const tabNames = [['accepted', 'Accepted'], ['rejected', 'Rejected'], ['near', 'Near-duplicates'], ['run', 'Run']];
  const tabButtons = {};
  const tabCounts = {};
  const runName = h('span', { class: 'runname' });
  const built = h('small');
  const liveEl = h('span', { class: 'live' });
  const flagsButton = h('button', { title: 'Download your flags as JSONL', onclick: () => src.downloadFlags() });
  const header = h('header', { class: 'top' },
    h('div', { class: 'brand' }, 'selfinstruct · ', runName, built),
    h('nav', { class: 'tabs', role: 'tablist' }, tabNames.map(([key, label]) => {
      tabCounts[key] = h('span', { class: 'count' });
      tabButtons[key] = h('button', { role: 'tab', 'data-tab': key, onclick: () => { location.hash = 'tab-' + key; } }, label, tabCounts[key]);
      return tabButtons[key];
    })),
    h('div', { class: 'spacer' }), liveEl, flagsButton);
  const main = h('main');
  app.append(header, main);

  function updateHeader() {
    const m = src.meta;
    runName.textContent = m.title || '';
    built.textContent = m.generated ? 'built ' + m.generated.replace('T', ' ').replace('Z', ' UTC') : '';
    tabCounts.accepted.textContent = fmt(m.accepted);
    tabCounts.rejected.textContent = fmt(Object.values(m.by_reason || {}).reduce((a, b) => a + b, 0));
    tabCounts.near.textContent = fmt((m.by_reason || {}).near_duplicate || 0);
    flagsButton.textContent = '⚑ ' + fmt(src.flags.size) + ' flagged ⤓';
  }

  // ---------------------------------------------------------------- list tabs
  // A list tab: toolbar, optional facets, the virtual list and the record view.
  function makeListTab(key, opts) {
    const tab = h('section', { class: 'tab', 'data-tab': key, hidden: true });
    const st = state[key];
    const search = h('input', { type: 'search', placeholder: opts.placeholder, 'aria-label': 'search', value: st.q });
    const sort = h('select', { 'aria-label': 'sort' }, opts.sorts().map(([v, label]) => h('option', { value: v, text: label })));
    sort.value = st.sort + ':' + (st.desc ? 'desc' : 'asc');
    const total = h('span', { class: 'total' });
    const dl = h('button', { title: 'Download the rows shown, as JSONL' }, '⤓ JSONL');
    const flaggedBox = h('input', { type: 'checkbox' });
    const tools = [search, sort];
    if (opts.flaggable) tools.push(h('label', {}, flaggedBox, 'flagged only'));
    const toolbar = h('div', { class: 'toolbar' }, opts.before || [], tools, total, h('span', { class: 'spacer' }), dl);
    const detail = h('div', { class: 'detail' }, h('p', { class: 'empty', text: opts.emptyDetail }));
    const vlist = new VList(opts.build, (row, item, i) => opts.fill(row, item, i), (item) => opts.pick(item, detail));
    const listpane = h('div', { class: 'listpane' }, opts.head(), vlist.el);
    const facets = opts.facets ? h('aside', { class: 'facets' }) : null;
    const split = h('div', { class: facets ? 'split three' : 'split' }, facets, listpane, detail);
    tab.append(toolbar, split);
    main.append(tab);
    const view = { tab, vlist, detail, facets, result: null, search, total, key, opts };
    let seq = 0;
    view.run = async (keepSelection) => {
      const mine = ++seq;
      const p = Object.assign({}, st);
      const name = opts.view();
      const t0 = performance.now();
      let result;
      try {
        result = await src.list(name, p);
      } catch (e) {
        toast('Could not load: ' + (e.message || e));
        return;
      }
      if (mine !== seq) return; // a newer query has started
      view.result = result;
      total.textContent = fmt(result.total) + (result.total === 1 ? ' row' : ' rows');
      vlist.set(result, keepSelection ? vlist.selected : -1, keepSelection);
      document.body.dataset.queryMs = (performance.now() - t0).toFixed(1); // read by benchmarks/bench_report.py
      if (facets) opts.drawFacets(facets, result.facets);
      if (!result.total) {
        setKids(detail, h('p', { class: 'empty', text: 'Nothing matches.' }));
      }
    };
    search.addEventListener('input', debounce(() => { st.q = search.value; view.run(); }, SERVE ? 250 : 120));
    sort.addEventListener('change', () => {
      const [v, d] = sort.value.split(':');
      st.sort = v;
      st.desc = d === 'desc';
      view.run();
    });
    flaggedBox.addEventListener('change', () => { st.flagged = flaggedBox.checked; view.run(); });
    dl.addEventListener('click', () => { if (view.result) src.download(opts.view(), Object.assign({}, st), view.result); });
    views[key] = view;
    return view;
  }

  function flagControls(rec, onChange) {
    const kind = rec.kind === 'a' ? 'accepted' : rec.kind === 'r' ? 'rejected' : 'seed';
    const current = src.flags.get(rec.ref);
    const note = h('input', { type: 'text', class: 'note', placeholder: 'note for the flag (optional, saved with it)', value: current ? current.note || '' : '' });
    const button = h('button', { class: current ? 'on' : '' }, current ? '⚑ Flagged' : '⚑ Flag');
    const toggle = async () => {
      const on = !src.flags.has(rec.ref);
      try {
        await src.flags.set(rec.ref, kind, on, note.value);
      } catch (e) {
        toast('Flag not saved: ' + (e.message || e));
        return;
      }
      button.classList.toggle('on', on);
      button.textContent = on ? '⚑ Flagged' : '⚑ Flag';
      updateHeader();
      if (onChange) onChange();
    };
    button.addEventListener('click', toggle);
    note.addEventListener('keydown', async (e) => {
      if (e.key !== 'Enter') return;
      if (src.flags.has(rec.ref)) await src.flags.set(rec.ref, kind, true, note.value); else await toggle();
      toast('Note saved');
    });
    return [button, note];
  }
  function textBlock(label, text) {
    return h('div', { class: 'sec' }, h('h4', { text: label }),
      text ? h('pre', { class: 'text', text }) : h('pre', { class: 'text none', text: '(none)' }));
  }
  function prov(pairs) {
    return h('dl', { class: 'prov' }, pairs.filter(([, v]) => v != null && v !== '').map(([k, v]) => [h('dt', { text: k }), h('dd', { text: String(v) })]));
  }
  function neighbourLink(nb) {
    if (!nb) return h('span', { class: 'hint', text: 'none recorded' });
    if (nb.kind === 't') return h('span', { class: 'hint', text: (nb.id ? nb.id + ' ' : '') + '(not in this report; text only)' });
    return h('a', { href: hashRef(nb.id || (nb.kind === 'a' ? 'a' + nb.key : '')), text: nb.id + (nb.kind === 's' ? ' (seed)' : '') });
  }

  function showRecord(rec, pane, refreshList) {
    const r = rec.record;
    const isRej = rec.kind === 'r';
    const title = rec.kind === 'a' ? r.id || 'task #' + rec.key : rec.kind === 's' ? 'seed ' + r.id : 'rejected #' + (rec.ref.split('-')[1]);
    const [flagBtn, note] = flagControls(rec, refreshList);
    const copy = h('button', { title: 'Copy this record as a JSON line' }, 'Copy JSON');
    copy.addEventListener('click', async () => toast((await copyText(JSON.stringify(r))) ? 'Copied' : 'Copy failed'));
    const head = h('div', { class: 'dhead' }, h('h2', { text: title }), isRej ? h('span', { class: 'chip ' + r.reason, text: r.reason }) : null,
      h('span', { class: 'grow' }), h('a', { href: hashRef(rec.ref), title: 'permalink', text: '#' + rec.ref }), copy, flagBtn);
    const kids = [head, note];
    if (isRej && r.detail) kids.push(h('div', { class: 'sec' }, h('h4', { text: 'Why' }), h('div', { text: r.detail })));
    if (isRej && !r.instruction) kids.push(textBlock('The whole answer (no task could be read from it)', r.output));
    else kids.push(textBlock('Instruction', r.instruction), textBlock('Input', r.input), textBlock('Output', r.output));
    if (rec.nearest || r.rouge_l != null) {
      const nb = rec.nearest;
      const over = r.rouge_l != null && src.meta.threshold != null && r.rouge_l > src.meta.threshold;
      kids.push(h('div', { class: 'sec' }, h('h4', { text: isRej ? 'Nearest task in the pool' : 'Nearest task when it was accepted' }),
        h('div', { class: 'dhead' }, h('span', { class: 'score' + (over ? ' over' : ''), text: 'ROUGE-L ' + fmt3(r.rouge_l) }), neighbourLink(nb),
          nb ? h('a', { href: hashRef('pair-' + rec.ref), text: 'compare side by side' }) : null),
        nb && nb.instruction ? h('pre', { class: 'text', text: nb.instruction }) : null));
    }
    if (r.judge_checks) {
      const bits = CHECK_NAMES.reduce((b, c, n) => b | (r.judge_checks[c] ? 1 << n : 0), 0);
      kids.push(h('div', { class: 'sec judge' }, h('h4', { text: 'Judge' }),
        h('div', { class: 'dhead' }, h('span', { class: 'score' + (r.judge_score != null && r.judge_score < 4 ? ' over' : ''), text: 'overall ' + fmt(r.judge_score) + ' / 5' }),
          h('span', { class: 'checks', text: checkWords(bits) })),
        r.judge_reasoning ? h('pre', { class: 'text', text: r.judge_reasoning }) : null));
    }
    const w = rec.words || [];
    kids.push(h('div', { class: 'sec' }, h('h4', { text: 'Provenance' }), prov([
      ['request', r.request], ['model', r.model], ['endpoint', r.endpoint], ['finish reason', r.finish_reason],
      ['created', r.created], ['settings', r.settings], ['judge score', r.judge_score],
      ['words', w.length ? 'instruction ' + fmt(w[0]) + (w[1] != null ? ' · input ' + fmt(w[1]) : '') + ' · output ' + fmt(w[2]) : null],
    ])));
    setKids(pane, kids);
    pane.scrollTop = 0;
  }

  function showPair(rec, pane, refreshList) {
    const r = rec.record;
    const nb = rec.nearest;
    const isRej = rec.kind === 'r';
    const ta = tokens(r.instruction), tb = tokens(nb ? nb.instruction : '');
    const [ma, mb] = lcsMarks(ta, tb);
    const t = src.meta.threshold;
    const over = r.rouge_l != null && t != null && r.rouge_l > t;
    const [flagBtn, note] = flagControls(rec, refreshList);
    const side = (label, link, text, toks, marks, input, output) => h('div', { class: 'side' },
      h('h4', { class: 'side-head' }, label, link),
      marked(text || '', toks, marks),
      input ? h('div', { class: 'sec' }, h('h4', { text: 'Input' }), h('pre', { class: 'text', text: input })) : null,
      output ? h('div', { class: 'sec' }, h('h4', { text: 'Output' }), h('pre', { class: 'text', text: output })) : null);
    setKids(pane,
      h('div', { class: 'dhead' }, h('span', { class: 'score' + (over ? ' over' : ''), text: 'ROUGE-L ' + fmt3(r.rouge_l) }),
        h('span', { class: 'hint', text: isRej ? (r.detail || 'rejected') : 'accepted' + (t != null ? ' (threshold ' + t + ')' : '') }),
        h('span', { class: 'grow' }), flagBtn),
      note,
      h('p', { class: 'hint', text: 'Marked: the words of the longest common subsequence, which ROUGE-L scores.' }),
      h('div', { class: 'pair' },
        side(isRej ? 'Rejected candidate ' : 'Accepted task ', h('a', { href: hashRef(rec.ref), text: isRej ? '#' + rec.ref : r.id }), r.instruction, ta, ma, r.input, r.output),
        side(isRej ? 'Collided with ' : 'Its nearest ', neighbourLink(nb), nb ? nb.instruction : '', tb, mb, nb && nb.input, nb && nb.output)));
    pane.scrollTop = 0;
  }

  async function openRecord(kind, key, pane, asPair, refreshList) {
    try {
      const rec = await src.record(kind, key);
      (asPair ? showPair : showRecord)(rec, pane, refreshList);
      history.replaceState(null, '', hashRef(asPair ? 'pair-' + rec.ref : rec.ref));
    } catch (e) {
      toast('Could not open: ' + (e.message || e));
    }
  }

  // -- Accepted
  const hasScore = () => !!src.meta.has_score;
  // Not "score": that class is the big number of the record view.
  const scoreCols = () => (hasScore() ? ' scored' + (src.meta.judge ? ' judged' : '') : '');
  const acceptedView = makeListTab('accepted', {
    placeholder: 'Search instruction, input and output ("a phrase" works)',
    emptyDetail: 'Pick a task on the left (↑/↓ move through the list).',
    flaggable: true,
    view: () => 'accepted',
    sorts: () => [
      ['order:asc', 'Written order'], ['order:desc', 'Newest first'],
      ['ow:desc', 'Output: longest first'], ['ow:asc', 'Output: shortest first'],
      ['iw:desc', 'Instruction: longest first'], ['iw:asc', 'Instruction: shortest first'],
      ['rouge:desc', 'Nearest ROUGE-L: highest first'], ['rouge:asc', 'Nearest ROUGE-L: lowest first'],
    ].concat(hasScore() ? [['score:desc', 'Judge score: highest first'], ['score:asc', 'Judge score: lowest first']] : []),
    head: () => h('div', { class: 'listhead cols-acc' + scoreCols() }, h('span'), h('span', { text: 'Task' }), h('span', { text: 'Instruction' }),
      h('span', { class: 'num', text: 'Words i/o' }), h('span', { class: 'num', text: 'ROUGE-L' }),
      hasScore() ? h('span', { class: 'num', text: 'Score', title: src.meta.judge ? 'Judge: overall score 1-5, then valid / input / output' : null }) : null),
    build: () => h('div', { class: 'row cols-acc' + scoreCols(), role: 'option' },
      h('span', { class: 'flag' }), h('span', { class: 'id' }), h('span'), h('span', { class: 'num muted' }), h('span', { class: 'num' }), hasScore() ? h('span', { class: 'num' }) : null),
    fill: (row, it) => {
      const c = row.children;
      if (!it) { c[2].textContent = '…'; c[0].textContent = c[1].textContent = c[3].textContent = c[4].textContent = ''; if (c[5]) c[5].textContent = ''; return; }
      c[0].textContent = src.flags.has(it.id || 'a' + it.k) ? '⚑' : '';
      c[1].textContent = it.id;
      c[2].textContent = it.ins;
      c[3].textContent = it.iw + ' / ' + it.ow;
      c[4].textContent = fmt3(it.r);
      if (c[5]) {
        // A judge's overall score is whole (1-5); other scores keep three decimals.
        const score = it.s == null ? '–' : Number.isInteger(it.s) ? String(it.s) : fmt3(it.s);
        c[5].textContent = it.c == null ? score : score + ' ' + checkMarks(it.c);
        c[5].title = it.c == null ? '' : checkWords(it.c);
      }
    },
    pick: (it, pane) => openRecord('a', it.k, pane, false, () => acceptedView.vlist.render()),
  });

  // -- Rejected
  const rejectedView = makeListTab('rejected', {
    placeholder: 'Search rejected candidates',
    emptyDetail: 'Pick a rejection to see why it was dropped.',
    flaggable: true,
    facets: true,
    view: () => 'rejected',
    sorts: () => [['order:asc', 'Written order'], ['order:desc', 'Newest first'], ['rouge:desc', 'ROUGE-L: highest first'],
      ['iw:desc', 'Instruction: longest first'], ['iw:asc', 'Instruction: shortest first'], ['ow:desc', 'Output: longest first']],
    head: () => h('div', { class: 'listhead cols-rej' }, h('span'), h('span', { text: 'Reason' }), h('span', { text: 'Instruction' }), h('span', { text: 'Detail' })),
    build: () => h('div', { class: 'row cols-rej', role: 'option' }, h('span', { class: 'flag' }), h('span', {}, h('span', { class: 'chip' })), h('span'), h('span', { class: 'muted' })),
    fill: (row, it) => {
      const c = row.children;
      const chip = c[1].firstChild;
      if (!it) { chip.textContent = ''; c[2].textContent = '…'; c[0].textContent = c[3].textContent = ''; return; }
      c[0].textContent = src.flags.has('rejected-' + it.n) ? '⚑' : '';
      chip.textContent = it.reason;
      chip.className = 'chip ' + it.reason;
      c[2].textContent = it.ins || (it.out ? '(answer) ' + it.out : '');
      c[2].className = it.ins ? '' : 'muted';
      c[3].textContent = it.detail;
    },
    pick: (it, pane) => openRecord('r', it.k, pane, false, () => rejectedView.vlist.render()),
    drawFacets: (box, counts) => {
      const st = state.rejected;
      const byReason = src.meta.by_reason || {};
      const included = src.meta.included || byReason;
      const reasons = Object.keys(byReason).sort((a, b) => byReason[b] - byReason[a] || (a < b ? -1 : 1));
      const here = counts || {};
      const all = Object.values(here).reduce((a, b) => a + b, 0);
      const biggest = Math.max(1, ...reasons.map((r) => here[r] || 0));
      const item = (reason, label, n, total) => {
        const on = st.reason === reason;
        const el = h('div', { class: 'facet' + (on ? ' on' : ''), role: 'button', 'data-reason': reason },
          h('span', { text: label }), h('span', { class: 'n', text: fmt(n) }),
          reason ? h('span', { class: 'bar' }, h('i')) : null,
          reason && total > (included[reason] || 0) ? h('span', { class: 'sample', text: 'sample of ' + fmt(included[reason] || 0) + ' from ' + fmt(total) }) : null);
        if (reason) el.querySelector('.bar i').style.width = (100 * n) / biggest + '%';
        el.addEventListener('click', () => { st.reason = on ? '' : reason; rejectedView.run(); });
        return el;
      };
      setKids(box, h('h3', { text: 'Reason' }), item('', 'All reasons', all, all), reasons.map((r) => item(r, r, here[r] || 0, byReason[r])));
    },
  });

  // -- Near-duplicates
  const nearSeg = h('span', { class: 'seg' });
  const nearView = makeListTab('near', {
    placeholder: 'Search the candidates',
    emptyDetail: 'Pick a pair to see both tasks side by side.',
    flaggable: false,
    before: [nearSeg],
    view: () => 'near-' + state.near.mode,
    sorts: () => [['rouge:desc', 'ROUGE-L: highest first'], ['rouge:asc', 'ROUGE-L: lowest first'], ['order:asc', 'Written order']],
    head: () => h('div', { class: 'listhead cols-near' }, h('span', { class: 'num', text: 'ROUGE-L' }), h('span', { text: 'Candidate' }), h('span', { text: 'Nearest task' })),
    build: () => h('div', { class: 'row cols-near', role: 'option' }, h('span', { class: 'num' }), h('span'), h('span', { class: 'muted' })),
    fill: (row, it) => {
      const c = row.children;
      if (!it) { c[0].textContent = ''; c[1].textContent = '…'; c[2].textContent = ''; return; }
      c[0].textContent = fmt3(it.r);
      c[1].textContent = it.ins;
      const o = it.other;
      c[2].textContent = o ? (o.id ? o.id + ' · ' : '') + (o.ins || '') : '';
    },
    pick: (it, pane) => openRecord(state.near.mode === 'rejected' ? 'r' : 'a', it.k, pane, true),
  });
  const segButtons = {};
  function drawSeg() {
    const m = src.meta.by_reason || {};
    const inc = src.meta.included || m;
    const nearCount = m.near_duplicate || 0;
    const sampled = (inc.near_duplicate || 0) < nearCount;
    segButtons.rejected.textContent = 'Rejected (' + fmt(nearCount) + ')';
    segButtons.rejected.title = 'Each rejected near-duplicate beside the task it collided with' + (sampled ? ' (this file carries a sample of ' + fmt(inc.near_duplicate || 0) + ')' : '');
    segButtons.accepted.textContent = 'Accepted → nearest (' + fmt(src.meta.accepted) + ')';
    segButtons.accepted.title = 'Each accepted task beside its nearest earlier task or seed';
    for (const k of ['rejected', 'accepted']) segButtons[k].classList.toggle('on', state.near.mode === k);
  }
  for (const k of ['rejected', 'accepted']) {
    segButtons[k] = h('button', { onclick: () => { state.near.mode = k; drawSeg(); nearView.run(); } });
    nearSeg.append(segButtons[k]);
  }

  // ---------------------------------------------------------------- Run tab: charts
  const runTab = h('section', { class: 'tab', 'data-tab': 'run', hidden: true });
  const runBody = h('div', { class: 'run' });
  runTab.append(runBody);
  main.append(runTab);
  const COLORS = ['#3b5bdb', '#e8590c', '#2f9e44', '#ae3ec9', '#1098ad', '#f08c00', '#c2255c', '#5c940d'];

  function card(title, hint, ...body) {
    return h('div', { class: 'card' }, h('h3', { text: title }), hint ? h('p', { class: 'hint', text: hint }) : null, ...body);
  }
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  // Horizontal bars: [[label, value], ...].
  function barsH(items, color) {
    if (!items.length) return h('p', { class: 'hint', text: 'nothing yet' });
    const W = 440, lh = 20, left = 150, right = 60;
    const max = Math.max(...items.map((x) => x[1]), 1);
    const svg = s('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + (items.length * lh + 4), role: 'img' });
    items.forEach(([label, v], i) => {
      const y = i * lh + 2;
      const w = ((W - left - right) * v) / max;
      const short = label.length > 24 ? label.slice(0, 23) + '…' : label;
      svg.append(s('text', { x: left - 6, y: y + 13, 'text-anchor': 'end' }, short),
        s('rect', { class: 'bar', x: left, y: y + 3, width: Math.max(1, w), height: lh - 6, rx: 2, fill: color || COLORS[0] }, s('title', {}, label + ': ' + fmt(v))),
        s('text', { x: left + w + 4, y: y + 13 }, fmt(v)));
    });
    return svg;
  }
  // Vertical bars over ranges: [[low, high, count], ...].
  function columns(bins, { color, marker, label, xfmt } = {}) {
    if (!bins.length) return h('p', { class: 'hint', text: 'nothing yet' });
    const W = 440, H = 170, L = 44, B = 24, T = 8, R = 18;
    const max = niceMax(Math.max(...bins.map((b) => b[2])));
    const lo = bins[0][0], hi = bins[bins.length - 1][1];
    const x = (v) => L + ((W - L - R) * (v - lo)) / (hi - lo || 1);
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const svg = s('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + H, role: 'img' });
    for (const f of [0, 0.5, 1]) svg.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }), s('text', { x: L - 4, y: y(max * f) + 4, 'text-anchor': 'end' }, fmt(max * f)));
    for (const [a, b, c] of bins) {
      svg.append(s('rect', { class: 'bar', x: x(a) + 0.5, y: y(c), width: Math.max(1, x(b) - x(a) - 1), height: Math.max(0, y(0) - y(c)), fill: color || COLORS[0] },
        s('title', {}, (xfmt ? xfmt(a) + '–' + xfmt(b) : a + '–' + b) + (label ? ' ' + label : '') + ': ' + fmt(c))));
    }
    // Ticks on round values (0.1, 0.2 ... or 25, 50 ...), about six of them.
    const step = niceMax((hi - lo) / 6);
    for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + 1e-9; v += step) {
      const at = Math.abs(v) < 1e-9 ? 0 : v; // no "-0"
      svg.append(s('text', { x: x(at), y: H - 8, 'text-anchor': 'middle' }, xfmt ? xfmt(at) : fmt(at)));
    }
    svg.append(s('line', { class: 'axis', x1: L, x2: W - R, y1: y(0), y2: y(0) }));
    if (marker != null && marker >= lo && marker <= hi) {
      svg.append(s('line', { x1: x(marker), x2: x(marker), y1: T, y2: y(0), stroke: '#c2410c', 'stroke-dasharray': '4 3' }),
        s('text', { x: x(marker) - 4, y: T + 10, 'text-anchor': 'end', fill: '#c2410c' }, 'threshold ' + marker));
    }
    return svg;
  }
  // Lines over shared x values: series [{name, values, color}], values may be null (gap).
  function lines(xs, series, { yfmt, xfmt, ymax } = {}) {
    if (!xs.length) return h('p', { class: 'hint', text: 'nothing yet' });
    const W = 1300, H = 220, L = 52, B = 24, T = 10, R = 12;
    const all = series.flatMap((sr) => sr.values.filter((v) => v != null));
    const max = ymax || niceMax(Math.max(0, ...all));
    const x0 = xs[0], x1 = xs[xs.length - 1];
    const x = (v) => L + ((W - L - R) * (v - x0)) / (x1 - x0 || 1);
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const svg = s('svg', { class: 'chart', viewBox: '0 0 ' + W + ' ' + H, role: 'img' });
    for (const f of [0, 0.25, 0.5, 0.75, 1]) svg.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }), s('text', { x: L - 4, y: y(max * f) + 4, 'text-anchor': 'end' }, yfmt ? yfmt(max * f) : fmt(max * f)));
    for (let k = 0; k <= 6; k++) {
      const v = x0 + ((x1 - x0) * k) / 6;
      svg.append(s('text', { x: x(v), y: H - 6, 'text-anchor': k === 0 ? 'start' : k === 6 ? 'end' : 'middle' }, xfmt ? xfmt(v) : fmt(v)));
    }
    series.forEach((sr, n) => {
      const color = sr.color || COLORS[n % COLORS.length];
      let d = '';
      let pen = false;
      sr.values.forEach((v, i) => {
        if (v == null) { pen = false; return; }
        d += (pen ? 'L' : 'M') + x(xs[i]).toFixed(1) + ' ' + y(v).toFixed(1);
        pen = true;
      });
      svg.append(s('path', { d, fill: 'none', stroke: color, 'stroke-width': 2 }));
      sr.values.forEach((v, i) => {
        if (v != null) svg.append(s('circle', { cx: x(xs[i]), cy: y(v), r: 2.5, fill: color }, s('title', {}, sr.name + ' at ' + (xfmt ? xfmt(xs[i]) : xs[i]) + ': ' + (yfmt ? yfmt(v) : fmt(v)) + (sr.notes ? sr.notes[i] : ''))));
      });
    });
    svg.append(s('line', { class: 'axis', x1: L, x2: W - R, y1: y(0), y2: y(0) }));
    return svg;
  }
  function legend(series) {
    return h('div', { class: 'legend' }, series.map((sr, n) => { const i = h('i'); i.style.background = sr.color || COLORS[n % COLORS.length]; return h('span', {}, i, sr.name); }));
  }
  function timeFmt(edges, axis) {
    if (axis !== 'time') return (v) => 'request ' + fmt(Math.round(v));
    const span = edges.length ? edges[edges.length - 1] - edges[0] : 0;
    return (v) => {
      const iso = new Date(v * 1000).toISOString();
      if (span > 2 * 86400) return iso.slice(5, 10) + ' ' + iso.slice(11, 16);
      return span > 3600 ? iso.slice(11, 16) : iso.slice(11, 19);
    };
  }
  function duration(sec) {
    if (sec == null) return '–';
    if (sec < 120) return sec.toFixed(0) + ' s';
    if (sec < 7200) return (sec / 60).toFixed(0) + ' min';
    return (sec / 3600).toFixed(1) + ' h';
  }

  // The judge's numbers (selfinstruct stats): the current judge in full, earlier judges in a table.
  function judgeCards(jd) {
    const cur = jd.judges[0];
    const corr = (v) => (v == null ? '–' : (v >= 0 ? '+' : '') + v.toFixed(2));
    const tile = (label, value, small) => h('div', { class: 'tile' + (small ? ' txt' : '') }, h('b', { text: value, title: value }), h('span', { text: label }));
    const lb = cur.length_bias;
    const tiles = h('div', { class: 'tiles' },
      tile('judged of ' + fmt(cur.tasks) + ' tasks', fmt(cur.judged)), tile('unjudged (tried, no score)', fmt(cur.unjudged)),
      tile('not tried', fmt(cur.not_tried)), tile('mean overall', cur.mean_overall == null ? '–' : cur.mean_overall.toFixed(2)),
      tile('all three checks pass', pct(cur.all_pass_rate)), tile('unreadable answers', pct(cur.parse_failure_rate)),
      tile('judge tokens per judged task', fmt(cur.tokens.per_judged)),
      tile('score ~ output words (Pearson / Spearman)', corr(lb.pearson) + ' / ' + corr(lb.spearman), true),
      tile('model', cur.model || '–', true), tile('judge', cur.fingerprint, true));
    const hint = cur.unjudged ? fmt(cur.unjudged) + ' unjudged: run `selfinstruct judge` on this run again to retry them. ' : '';
    const scores = Object.entries(cur.scores).map(([level, n]) => ['overall ' + level, n]).reverse();
    const passTable = h('table', { class: 'tbl' }, h('tr', {}, ['check', 'passed'].map((t) => h('th', { text: t }))),
      Object.entries(cur.pass_rates).concat([['all three', cur.all_pass_rate]]).map(([k, v]) => h('tr', {}, h('td', { text: k }), h('td', { text: pct(v) }))));
    const others = jd.judges.slice(1);
    const older = others.length ? h('table', { class: 'tbl' }, h('tr', {}, ['earlier judge', 'model', 'judged', 'unjudged', 'mean overall'].map((t) => h('th', { text: t }))),
      others.map((o) => h('tr', {}, [o.fingerprint, o.model || '–', fmt(o.judged), fmt(o.unjudged), o.mean_overall == null ? '–' : o.mean_overall.toFixed(2)].map((t) => h('td', { text: t }))))) : null;
    return [
      h('div', { class: 'card wide judge' }, h('h3', { text: 'Judge' }),
        h('p', { class: 'hint', text: hint + 'Scores of the current judge; a self-instruct task shows its weakest instance in the Accepted list. A correlation of score with output length far from 0 hints at a length bias.' }),
        tiles, older),
      card('Judge: overall score', fmt(cur.judged) + ' judged', barsH(scores, COLORS[3])),
      card('Judge: pass rates', 'valid instruction, fitting input, correct output', passTable),
    ];
  }

  async function drawRun() {
    let st;
    try {
      st = await src.stats();
    } catch (e) {
      setKids(runBody, h('p', { class: 'empty', text: 'Could not load the numbers: ' + (e.message || e) }));
      return;
    }
    const sm = st.summary;
    const tile = (label, value, small) => h('div', { class: 'tile' + (small ? ' txt' : '') }, h('b', { text: value, title: value }), h('span', { text: label }));
    const tiles = h('div', { class: 'tiles' },
      tile('accepted' + (sm.target ? ' of ' + fmt(sm.target) : ''), fmt(sm.accepted)),
      tile('candidates judged', fmt(sm.candidates)), tile('accept rate', pct(sm.accept_rate)),
      tile('rejected', fmt(sm.rejected)), tile('requests', fmt(sm.requests)), tile('failed requests', fmt(sm.failed_requests)),
      tile('prompt tokens', fmt(sm.prompt_tokens)), tile('completion tokens', fmt(sm.completion_tokens)),
      tile('tokens per accepted task', fmt(sm.tokens_per_accepted)),
      tile('elapsed', duration(sm.elapsed_seconds)),
      tile('tasks per minute', fmt(sm.tasks_per_minute)), tile('with input / without', fmt(sm.with_input) + ' / ' + fmt(sm.without_input), true),
      tile('status', sm.status || '–', true), tile('model', sm.model || '–', true));
    const overview = h('div', { class: 'card wide' }, h('h3', { text: 'Run' }), tiles,
      sm.skipped_lines ? h('p', { class: 'hint', text: fmt(sm.skipped_lines) + ' unreadable line(s) skipped' }) : null);

    const tl = st.timeline;
    const tf = timeFmt(tl.edges, tl.axis);
    const mids = tl.edges.slice(0, -1).map((e, i) => (e + tl.edges[i + 1]) / 2);
    const rate = tl.accepted.map((a, i) => (tl.candidates[i] ? a / tl.candidates[i] : null));
    const rateSeries = [{ name: 'accept rate', values: rate, notes: tl.accepted.map((a, i) => ' (' + fmt(a) + ' of ' + fmt(tl.candidates[i]) + ')') }];
    const timeline = h('div', { class: 'card wide' }, h('h3', { text: 'Accept rate over the run' }),
      h('p', { class: 'hint', text: 'Accepted tasks / candidates judged, per ' + (tl.axis === 'time' ? 'time slice' : 'slice of requests') + '. It falls as the pool fills and more candidates are near-duplicates.' }),
      lines(mids, rateSeries, { yfmt: (v) => (100 * v).toFixed(0) + '%', xfmt: tf, ymax: 1 }));

    const ep = st.endpoints;
    const etf = timeFmt(ep.edges, 'time');
    const emids = ep.edges.slice(0, -1).map((e, i) => (e + ep.edges[i + 1]) / 2);
    const eseries = ep.series.map((x) => ({ name: x.endpoint, values: x.tokens_per_s }));
    const etable = h('table', { class: 'tbl' }, h('tr', {}, ['endpoint', 'requests', 'failed', 'completion tokens', 'tokens/s', 'mean latency', 'p95 latency'].map((t) => h('th', { text: t }))),
      ep.rows.map((r) => h('tr', {}, [r.endpoint, fmt(r.requests), fmt(r.failed), fmt(r.completion_tokens), fmt(r.completion_tokens_per_s),
        r.latency_mean == null ? '–' : r.latency_mean.toFixed(2) + ' s', r.latency_p95 == null ? '–' : r.latency_p95.toFixed(2) + ' s'].map((t) => h('td', { text: t })))));
    const endpoints = h('div', { class: 'card wide' }, h('h3', { text: 'Endpoints' }),
      ep.rows.length ? [etable, eseries.length ? [h('p', { class: 'hint', text: 'Completion tokens per second, per endpoint' }), legend(eseries), lines(emids, eseries, { xfmt: etf })] : null]
        : h('p', { class: 'hint', text: 'no requests.jsonl in this run (made before per-request records)' }));

    const rg = st.rouge;
    const rbins = rg.bins.slice();
    if (rg.over) rbins.push([rg.threshold, 1, rg.over]);
    const nd = rg.near_duplicate_bins.map((c, i) => [i / 10, (i + 1) / 10, c]);
    const words = st.words;
    const wcard = (name) => {
      const w = words[name];
      const p = w.percentiles;
      return card('Words: ' + name, p ? 'p5 ' + fmt(p.p5) + ' · median ' + fmt(p.p50) + ' · p95 ' + fmt(p.p95) + ' · max ' + fmt(p.max) + ' · ' + fmt(p.count) + ' tasks' : 'no tasks', columns(w.histogram, { label: 'words', xfmt: (v) => fmt(Math.round(v)), color: COLORS[name === 'instruction' ? 0 : name === 'input' ? 4 : 2] }));
    };
    const fails = st.failures.length ? card('Failed requests by kind', null, barsH(st.failures, COLORS[1])) : null;
    setKids(runBody, overview, st.judge ? judgeCards(st.judge) : null, timeline,
      card('Rejections by reason', fmt(sm.rejected) + ' rejected', barsH(st.rejected_by_reason, COLORS[1])),
      card('ROUGE-L of accepted tasks to their nearest', 'mean ' + fmt3(rg.mean) + '; a task is rejected above ' + rg.threshold, columns(rbins, { label: 'tasks', marker: rg.threshold, xfmt: (v) => v.toFixed(1) })),
      card('ROUGE-L of rejected near-duplicates', null, columns(nd, { label: 'rejections', color: COLORS[1], marker: rg.threshold, xfmt: (v) => v.toFixed(1) })),
      fails,
      wcard('instruction'), wcard('input'), wcard('output'),
      card('Leading words', fmt(st.leading_words.distinct) + ' distinct first words', barsH(st.leading_words.top, COLORS[3])),
      card('Leading word pairs', fmt(st.leading_bigrams.distinct) + ' distinct', barsH(st.leading_bigrams.top, COLORS[4])),
      endpoints);
  }

  // ---------------------------------------------------------------- tabs and permalinks
  function showTab(key) {
    state.tab = key;
    for (const [k, b] of Object.entries(tabButtons)) b.classList.toggle('on', k === key);
    for (const sec of main.children) sec.hidden = sec.dataset.tab !== key;
    if (key === 'near') drawSeg();
    if (key === 'run' && !statsDrawn) { statsDrawn = true; return drawRun(); }
    if (views[key] && !views[key].result) return views[key].run();
    return Promise.resolve();
  }
  // Permalinks: #<task id>, #rejected-<n>, #<seed id>, #pair-<ref>, #tab-<name>.
  async function route() {
    const ref = decodeURIComponent(location.hash.slice(1));
    if (!ref) { await showTab(state.tab); return; }
    const tab = /^tab-(accepted|rejected|near|run)$/.exec(ref);
    if (tab) { await showTab(tab[1]); return; }
    const pair = ref.startsWith('pair-');
    const where = await src.lookup(pair ? ref.slice(5) : ref);
    if (!where) { toast('No record ' + ref + ' in this report'); await showTab(state.tab); return; }
    if (pair && where.kind !== 's') {
      const mode = where.kind === 'r' ? 'rejected' : 'accepted';
      if (state.near.mode !== mode) { state.near.mode = mode; nearView.result = null; }
      await showTab('near');
      await openRecord(where.kind, where.key, nearView.detail, true);
      await selectIn(nearView, where.key);
      return;
    }
    const view = where.kind === 'r' ? rejectedView : acceptedView;
    await showTab(where.kind === 'r' ? 'rejected' : 'accepted');
    await openRecord(where.kind, where.key, view.detail, false, () => view.vlist.render());
    if (where.kind !== 's') await selectIn(view, where.key);
  }
  // Highlight the record in the list when the list holds it (it may be filtered out).
  async function selectIn(view, key) {
    if (!view.result) await view.run();
    if (!view.result) return;
    const at = await view.result.locate(key);
    if (at >= 0) {
      view.vlist.selected = at;
      view.vlist.reveal(at);
      view.vlist.render();
    }
  }
  window.addEventListener('hashchange', route);

  // --serve: the run may still be writing; say when there are new rows.
  async function followLive() {
    let seen = null;
    let wasLoading = false;
    const refreshAll = () => {
      for (const v of Object.values(views)) if (v.result) v.run(true);
      statsDrawn = false;
      if (state.tab === 'run') showTab('run');
    };
    const tick = async () => {
      try {
        const m = await src.refreshMeta();
        const now = m.accepted + m.rejected;
        if (seen == null) seen = now;
        liveEl.classList.add('active');
        liveEl.onclick = null;
        if (m.loading) {
          // Still reading the files: show what is there so far, quietly.
          liveEl.textContent = 'reading the run… ' + fmt(now) + ' rows';
          if (now !== seen) { seen = now; for (const v of Object.values(views)) if (!v.tab.hidden) v.run(true); }
        } else if (wasLoading) {
          seen = now;
          refreshAll();
        }
        if (!m.loading) {
          liveEl.textContent = 'live · ' + fmt(seen) + ' rows';
          if (now !== seen) {
            liveEl.textContent += ' (+' + fmt(now - seen) + ' new: click to show)';
            liveEl.onclick = () => { seen = now; liveEl.textContent = 'live · ' + fmt(seen) + ' rows'; refreshAll(); };
          }
        }
        wasLoading = m.loading;
        updateHeader();
        if (state.tab === 'near') drawSeg();
      } catch (e) {
        liveEl.classList.remove('active');
        liveEl.textContent = 'server not answering';
      }
      setTimeout(tick, src.meta.loading ? 1000 : 3000);
    };
    await tick();
  }

  async function start() {
    if (SERVE) followLive();
    updateHeader();
    drawSeg();
    document.title = (src.meta.title || 'run') + ' · selfinstruct report';
    await route();
    document.body.dataset.ready = '1'; // for tests and benchmarks: the first list is on screen
  }
  start();
  }

  (async () => {
    if (SERVE) {
      try {
        await src.refreshMeta();
        await src.flags.load();
      } catch (e) {
        setKids(app, h('p', { class: 'empty', text: 'The report server is not answering: ' + (e.message || e) }));
        return;
      }
    }
    build();
  })();
})();
