#!/usr/bin/env node
// The admin console, in a real browser: an administrator signs in with her token, finds Jane,
// resends her link, revokes another invitation, uploads a bulk file and watches its job; every
// page she sees passes axe-core's checks. A reader signs in with the keyboard alone and sees no
// button; forged posts are refused.
//
// Usage: node console.mjs --base URL --jane NAME --revokee NAME --erased ID --bulk-file PATH --artifacts DIR
// The tokens come from the environment: ADMIN_TOKEN, READER_TOKEN. CHROMIUM names the browser
// (default /usr/bin/chromium). playwright-core and axe-core are found through NODE_PATH
// (tests/run installs them and sets TEST_BROWSER_NODE_MODULES).
//
// Screenshots go to the artifacts directory. On success one JSON line on stdout tells what the
// browser saw; on failure the page is screenshotted, the message goes to stderr, exit code 1.

import { createRequire } from 'node:module';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const WAIT_MS = 30_000; // every single wait
const OVERALL_MS = 240_000; // the whole run
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
// What axe-core checks: WCAG 2.1 A and AA, and its best practices.
const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'];

function fail(message) {
  const err = new Error(message);
  err.plain = true;
  throw err;
}

function options() {
  const { values } = parseArgs({
    options: {
      base: { type: 'string' },
      jane: { type: 'string' },
      revokee: { type: 'string' },
      erased: { type: 'string' },
      'bulk-file': { type: 'string' },
      artifacts: { type: 'string' },
    },
  });
  const pick = (value, name) => {
    if (!value) fail(`missing ${name}`);
    return value;
  };
  return {
    base: pick(values.base, '--base').replace(/\/+$/, ''),
    jane: pick(values.jane, '--jane'),
    revokee: pick(values.revokee, '--revokee'),
    erased: pick(values.erased, '--erased'),
    bulkFile: pick(values['bulk-file'], '--bulk-file'),
    artifacts: pick(values.artifacts, '--artifacts'),
    adminToken: pick(process.env.ADMIN_TOKEN, 'ADMIN_TOKEN'),
    readerToken: pick(process.env.READER_TOKEN, 'READER_TOKEN'),
    chromium: process.env.CHROMIUM || '/usr/bin/chromium',
  };
}

function load(name) {
  const require = createRequire(import.meta.url);
  try {
    return { module: require(name), resolve: (p) => require.resolve(p) };
  } catch (e) {
    fail(
      `cannot load ${name} (${e.code ?? e.message}); NODE_PATH=${process.env.NODE_PATH ?? ''}: ` +
        'run the browser test through tests/run, which installs it',
    );
  }
}

async function main() {
  const opts = options();
  const { chromium } = load('playwright-core').module;
  const axeSource = readFileSync(load('axe-core').resolve('axe-core/axe.min.js'), 'utf8');
  mkdirSync(opts.artifacts, { recursive: true });
  const saw = { pages: {}, axe: {}, forged: {}, reader: {}, bulk: {}, erased: {}, screenshots: [] };
  let current = null;
  let step = 'launching Chromium';

  const shot = async (page, name) => {
    const path = join(opts.artifacts, name);
    await page.screenshot({ path, fullPage: true, timeout: WAIT_MS });
    saw.screenshots.push(path);
  };
  // axe-core on the page as it is; any violation fails the run, named with its nodes.
  const axe = async (page, name) => {
    await page.evaluate(axeSource);
    const result = await page.evaluate(
      (tags) => window.axe.run(document, { runOnly: { type: 'tag', values: tags } }),
      AXE_TAGS,
    );
    saw.axe[name] = { passes: result.passes.length, violations: result.violations.length };
    if (result.violations.length > 0) {
      const detail = result.violations
        .map((v) => `${v.id} (${v.impact}): ${v.help}; ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`)
        .join('\n  ');
      fail(`axe-core found ${result.violations.length} violation(s) on ${name}:\n  ${detail}`);
    }
  };
  const heading = async (page) =>
    (await page.getByRole('heading', { level: 1 }).innerText({ timeout: WAIT_MS })).trim();

  const browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: WAIT_MS,
  });
  try {
    // The administrator. The pages forbid every script (CSP); axe-core is one, so this context
    // lets the test inject it. The reader's context below keeps the policy.
    const admin = await browser.newContext({ viewport: { width: 1200, height: 900 }, bypassCSP: true });
    admin.setDefaultTimeout(WAIT_MS);
    const page = await admin.newPage();
    current = page;

    step = 'opening /admin without a session';
    await page.goto(`${opts.base}/admin`);
    if (!page.url().startsWith(`${opts.base}/admin/sign-in`)) fail(`/admin led to ${page.url()}, not to the sign-in form`);
    saw.pages.sign_in = await heading(page);
    await axe(page, 'sign-in');
    await shot(page, '01-sign-in.png');

    step = 'signing in with the admin token';
    await page.getByLabel('Admin token', { exact: true }).fill(opts.adminToken);
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
    await page.waitForURL(`${opts.base}/admin`);
    saw.pages.overview = await heading(page);
    saw.pages.overview_audit = (await page.locator('#audit-verify').innerText()).trim();
    saw.pages.overview_rate = (await page.locator('#activation-rate').innerText()).trim();
    await axe(page, 'overview');
    await shot(page, '02-overview.png');

    step = 'finding Jane in the invitations';
    await page.getByRole('navigation', { name: 'Console' }).getByRole('link', { name: 'Invitations', exact: true }).click();
    await page.getByLabel('Username or email contains', { exact: true }).fill(opts.jane);
    await page.getByLabel('State', { exact: true }).selectOption('CodeIssued');
    await page.getByRole('button', { name: 'Show', exact: true }).click();
    await page.waitForURL(/\/admin\/invitations\?/);
    const rows = page.locator('#invitations tbody tr');
    saw.pages.list_rows = (await rows.allInnerTexts()).map((r) => r.replace(/\s+/g, ' ').trim());
    const janeLink = page.locator('#invitations').getByRole('link', { name: opts.jane, exact: true });
    await janeLink.waitFor();
    await axe(page, 'invitations');
    await shot(page, '03-invitations-jane.png');

    step = "opening Jane's page";
    await janeLink.click();
    await page.waitForURL(/\/admin\/users\/[0-9a-f-]+$/);
    const janeUrl = page.url();
    saw.pages.jane_url = janeUrl;
    saw.pages.jane = await heading(page);
    saw.pages.jane_timeline = (await page.locator('#timeline tbody tr').allInnerTexts()).map((r) => r.replace(/\s+/g, ' ').trim());
    saw.pages.jane_mails = (await page.locator('#mails tbody tr').allInnerTexts()).map((r) => r.replace(/\s+/g, ' ').trim());
    await axe(page, 'user');
    await shot(page, '04-jane.png');

    step = "resending Jane's link";
    await page.getByRole('link', { name: 'Resend the link', exact: true }).click();
    await page.waitForURL(/\/resend$/);
    saw.pages.resend_confirm = await heading(page);
    await axe(page, 'resend-confirmation');
    await shot(page, '05-resend-confirmation.png');
    await page.getByRole('button', { name: 'Yes, resend the link', exact: true }).click();
    await page.waitForURL(/\?done=resent$/);
    saw.pages.resent = (await page.locator('#done').innerText()).trim();
    await shot(page, '06-resent.png');

    step = 'forging posts with the admin session';
    const revokeUrl = `${janeUrl}/revoke`;
    const noToken = await admin.request.post(revokeUrl, { form: { reason: 'forged' }, maxRedirects: 0 });
    saw.forged.no_csrf = noToken.status();
    const wrongToken = await admin.request.post(revokeUrl, { form: { csrf: 'k1.AAAA', reason: 'forged' }, maxRedirects: 0 });
    saw.forged.wrong_csrf = wrongToken.status();
    const genuineCsrf = await page.locator('form[action="/admin/sign-out"] input[name="csrf"]').getAttribute('value');
    const crossSite = await admin.request.post(revokeUrl, {
      form: { csrf: genuineCsrf, reason: 'forged' },
      headers: { 'Sec-Fetch-Site': 'cross-site', Origin: 'https://evil.example' },
      maxRedirects: 0,
    });
    saw.forged.cross_site_with_token = crossSite.status();
    // A page of another site that posts a form to the console: SameSite=Strict keeps the session
    // cookie off the request, so it meets the sign-in form.
    const evil = await admin.newPage();
    current = evil;
    await evil.setContent(
      `<form method="post" action="${revokeUrl}"><input name="csrf" value="${genuineCsrf}"><button>go</button></form>`,
    );
    await evil.getByRole('button', { name: 'go' }).click();
    await evil.waitForLoadState('load');
    saw.forged.other_site_form_led_to = evil.url();
    await evil.close();
    current = page;

    step = 'revoking the other invitation';
    await page.goto(`${opts.base}/admin/invitations?q=${encodeURIComponent(opts.revokee)}`);
    await page.locator('#invitations').getByRole('link', { name: opts.revokee, exact: true }).click();
    await page.getByRole('link', { name: 'Revoke the invitation', exact: true }).click();
    await page.getByLabel('Reason (optional)', { exact: true }).fill('left before starting');
    await axe(page, 'revoke-confirmation');
    await shot(page, '07-revoke-confirmation.png');
    await page.getByRole('button', { name: 'Yes, revoke the invitation', exact: true }).click();
    await page.waitForURL(/\?done=revoked$/);
    saw.pages.revoked = (await page.locator('#done').innerText()).trim();
    saw.pages.revoked_state = (await page.locator('#view-state').innerText()).trim();
    await shot(page, '08-revoked.png');

    step = 'listing the erased users';
    await page.getByRole('navigation', { name: 'Console' }).getByRole('link', { name: 'Invitations', exact: true }).click();
    await page.getByLabel('State', { exact: true }).selectOption('Erased');
    await page.getByRole('button', { name: 'Show', exact: true }).click();
    await page.waitForURL(/\/admin\/invitations\?/);
    saw.erased.rows = (await page.locator('#invitations tbody tr').allInnerTexts()).map((r) => r.replace(/\s+/g, ' ').trim());
    await axe(page, 'invitations-erased');
    await shot(page, '08a-erased-list.png');
    step = "opening the erased user's page";
    // Her username is erased: the row links her by her id.
    await page.locator('#invitations').getByRole('link', { name: opts.erased, exact: true }).click();
    await page.waitForURL(/\/admin\/users\/[0-9a-f-]+$/);
    saw.erased.heading = await heading(page);
    saw.erased.state = (await page.locator('#view-state').innerText()).trim();
    saw.erased.note = (await page.locator('#erased').innerText()).trim();
    saw.erased.username = (await page.locator('#view-username').innerText()).trim();
    saw.erased.email = (await page.locator('#view-email').innerText()).trim();
    saw.erased.claims = (await page.locator('#view-claims').innerText()).trim();
    saw.erased.text = await page.locator('body').innerText();
    await axe(page, 'erased-user');
    await shot(page, '08b-erased-user.png');

    step = 'uploading a bulk file';
    await page.getByRole('navigation', { name: 'Console' }).getByRole('link', { name: 'Bulk invitations', exact: true }).click();
    await axe(page, 'bulk');
    await page.getByLabel('File to upload (CSV or JSON lines)', { exact: true }).setInputFiles(opts.bulkFile);
    await page.getByRole('button', { name: 'Upload and invite', exact: true }).click();
    await page.waitForURL(/\/admin\/bulk\/[0-9a-f-]+$/);
    saw.bulk.url = page.url();
    saw.bulk.first_status = (await page.locator('#job-status').innerText()).trim();
    await shot(page, '09-bulk-job.png');
    step = 'watching the bulk job until it is done';
    // The page reloads itself every 2 s while the job runs (a meta refresh, no script).
    await page.locator('#job-status', { hasText: /^Done/ }).waitFor({ timeout: 60_000 });
    saw.bulk.status = (await page.locator('#job-status').innerText()).trim();
    saw.bulk.progress = (await page.locator('label[for="progress"]').innerText()).trim();
    saw.bulk.failed_rows = (await page.locator('#failed-rows tbody tr').allInnerTexts()).map((r) => r.replace(/\s+/g, ' ').trim());
    await axe(page, 'bulk-job');
    await shot(page, '10-bulk-job-done.png');
    step = 'downloading the failed rows';
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.getByRole('link', { name: 'Download these rows (CSV)', exact: true }).click(),
    ]);
    const csvPath = join(opts.artifacts, 'failed-rows.csv');
    await download.saveAs(csvPath);
    saw.bulk.failed_csv = readFileSync(csvPath, 'utf8');

    step = 'signing out';
    await page.getByRole('button', { name: 'Sign out', exact: true }).click();
    await page.waitForURL(/\/admin\/sign-in\?signed_out=1$/);
    await page.goto(janeUrl);
    saw.pages.after_sign_out = page.url();

    // The reader, with the keyboard alone: the skip link first, then the token field.
    step = 'signing in as the reader with the keyboard';
    const reader = await browser.newContext({ viewport: { width: 1200, height: 900 } });
    reader.setDefaultTimeout(WAIT_MS);
    const rpage = await reader.newPage();
    current = rpage;
    await rpage.goto(`${opts.base}/admin/sign-in`);
    await rpage.keyboard.press('Tab');
    saw.reader.first_tab = await rpage.evaluate(() => document.activeElement?.textContent?.trim());
    await rpage.keyboard.press('Tab');
    saw.reader.second_tab = await rpage.evaluate(() => document.activeElement?.id);
    await rpage.keyboard.type(opts.readerToken);
    await rpage.keyboard.press('Enter');
    await rpage.waitForURL(`${opts.base}/admin`);
    step = "opening Jane's page as the reader";
    await rpage.goto(janeUrl);
    saw.reader.jane = await heading(rpage);
    saw.reader.buttons = {
      resend: await rpage.getByRole('link', { name: 'Resend the link' }).count(),
      revoke: await rpage.getByRole('link', { name: 'Revoke the invitation' }).count(),
    };
    await shot(rpage, '11-reader-sees-no-buttons.png');
    await rpage.goto(`${opts.base}/admin/bulk`);
    saw.reader.upload_fields = await rpage.locator('input[type=file]').count();
    const readerCsrf = await rpage.locator('form[action="/admin/sign-out"] input[name="csrf"]').getAttribute('value');
    const readerPost = await reader.request.post(`${janeUrl}/resend`, { form: { csrf: readerCsrf }, maxRedirects: 0 });
    saw.reader.resend_post = readerPost.status();

    process.stdout.write(`${JSON.stringify({ ok: true, ...saw })}\n`);
  } catch (e) {
    if (current) {
      await current
        .screenshot({ path: join(opts.artifacts, 'failure.png'), fullPage: true, timeout: 10_000 })
        .then(() => saw.screenshots.push(join(opts.artifacts, 'failure.png')))
        .catch(() => {});
    }
    const url = current ? current.url() : '(no page)';
    e.message = `failed while ${step} (page ${url}): ${e.message}\nso far: ${JSON.stringify(saw)}`;
    throw e;
  } finally {
    await browser.close().catch(() => {});
  }
}

const watchdog = setTimeout(() => {
  process.stderr.write(`console: gave up after ${OVERALL_MS / 1000} s\n`);
  process.exit(2);
}, OVERALL_MS);
watchdog.unref();

main().then(
  () => process.exit(0),
  (e) => {
    const detail = e.plain || !e.stack ? '' : `\n${e.stack.split('\n').slice(1).join('\n')}`;
    process.stderr.write(`console: ${e.message ?? e}${detail}\n`);
    process.exit(1);
  },
);
