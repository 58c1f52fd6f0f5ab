// Opens a generated documentation site in headless Chromium (playwright-core driving
// Debian's chromium) and reports what it saw as one JSON object on stdout.
// Usage: NODE_PATH=<node_modules> node site_check.cjs CONFIG.json
// CONFIG: { chromium, site, pages: [relative paths], query, screenshots: {name: page}, shotDir }
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

(async () => {
  const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const browser = await chromium.launch({
    executablePath: config.chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  const report = {
    consoleErrors: [], pageErrors: [], requests: [], dialogs: [], pwned: [],
    pages: [], nodes: {}, filter: null, screenshots: {},
  };
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  let current = '';
  page.on('console', (m) => { if (m.type() === 'error') report.consoleErrors.push(`${current}: ${m.text()}`); });
  page.on('pageerror', (e) => report.pageErrors.push(`${current}: ${e.message}`));
  page.on('dialog', async (d) => { report.dialogs.push(`${current}: ${d.message()}`); await d.dismiss(); });
  page.on('request', (r) => { if (!r.url().startsWith('file://') && !r.url().startsWith('data:')) report.requests.push(`${current}: ${r.url()}`); });
  const url = (p) => 'file://' + path.join(config.site, p);

  for (const p of config.pages) {
    current = p;
    await page.goto(url(p), { waitUntil: 'load' });
    const seen = await page.evaluate(() => ({
      h1: (document.querySelector('h1') || {}).textContent || '',
      pwned: typeof window.__pwned !== 'undefined' ? String(window.__pwned) : null,
      // Personal fields as a reader sees them: each visible mark and the row it is in.
      personal: Array.from(document.querySelectorAll('[data-personal]'))
        .filter((b) => b.offsetParent !== null && b.textContent.trim() !== '')
        .map((b) => ({ field: b.getAttribute('data-personal'), title: b.getAttribute('title') || '',
          row: (b.closest('tr') || b).textContent.trim() })),
      subject: (() => {
        const s = document.querySelector('.personal-subject');
        return s && s.offsetParent !== null ? s.textContent.trim() : null;
      })(),
    }));
    if (seen.pwned !== null) report.pwned.push(`${p}: ${seen.pwned}`);
    report.pages.push({ path: p, h1: seen.h1.trim(), personal: seen.personal, subject: seen.subject });
  }

  current = 'flow.html';
  await page.goto(url('flow.html'), { waitUntil: 'load' });
  report.nodes = await page.evaluate(() => {
    const out = {};
    document.querySelectorAll('svg g.node').forEach((g) => {
      const kind = g.getAttribute('data-kind');
      const a = g.querySelector('a');
      (out[kind] = out[kind] || []).push({ key: g.getAttribute('data-key'), href: a ? a.getAttribute('href') : null });
    });
    return out;
  });

  current = 'index.html';
  await page.goto(url('index.html'), { waitUntil: 'load' });
  const visible = () => page.evaluate(() => Array.from(document.querySelectorAll('[data-search]'))
    .filter((li) => !li.hidden && li.offsetParent !== null).map((li) => li.getAttribute('data-search')));
  const before = await visible();
  const countText = await page.textContent('#count');
  await page.fill('#filter', config.query);
  const after = await visible();
  const noMatch = 'zzz-nothing-matches-this';
  await page.fill('#filter', noMatch);
  const none = await visible();
  const sectionsShown = await page.evaluate(() => Array.from(document.querySelectorAll('.ns')).filter((s) => !s.hidden).length);
  await page.fill('#filter', '');
  const cleared = await visible();
  report.filter = {
    query: config.query, total: before.length, countText,
    matched: after.length, allMatch: after.every((s) => s.includes(config.query)),
    none: none.length, sectionsShownForNone: sectionsShown, cleared: cleared.length,
  };

  fs.mkdirSync(config.shotDir, { recursive: true });
  for (const [name, p] of Object.entries(config.screenshots)) {
    current = p;
    await page.goto(url(p), { waitUntil: 'load' });
    const file = path.join(config.shotDir, name + '.png');
    await page.screenshot({ path: file, fullPage: true });
    report.screenshots[name] = file;
  }
  await browser.close();
  console.log(JSON.stringify(report));
})().catch((e) => { console.error(e); process.exit(2); });
