#!/usr/bin/env node
// Jane, in a real browser: she reads her invitation in MailDev, clicks "Create Password", types
// her new password twice on the page it opens, submits, and sees that her account is active.
//
// Usage: node create-password.mjs --maildev URL --mail-id ID --password PW --artifacts DIR
// Each option falls back to an environment variable: MAILDEV_URL, MAIL_ID, NEW_PASSWORD,
// ARTIFACTS_DIR; CHROMIUM names the browser (default /usr/bin/chromium). playwright-core is
// found through NODE_PATH (tests/run installs it and sets TEST_BROWSER_NODE_MODULES).
//
// Screenshots go to the artifacts directory. On success one JSON line on stdout tells what the
// browser saw; on failure the page is screenshotted, the message goes to stderr, exit code 1.

import { createRequire } from 'node:module';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const WAIT_MS = 30_000; // every single wait
const OVERALL_MS = 150_000; // the whole run
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

function fail(message) {
  const err = new Error(message);
  err.plain = true;
  throw err;
}

function options() {
  const { values } = parseArgs({
    options: {
      maildev: { type: 'string' },
      'mail-id': { type: 'string' },
      password: { type: 'string' },
      artifacts: { type: 'string' },
    },
  });
  const pick = (flag, env) => {
    const value = values[flag] ?? process.env[env];
    if (!value) fail(`missing --${flag} (or ${env})`);
    return value;
  };
  return {
    maildev: pick('maildev', 'MAILDEV_URL').replace(/\/+$/, ''),
    mailId: pick('mail-id', 'MAIL_ID'),
    password: pick('password', 'NEW_PASSWORD'),
    artifacts: pick('artifacts', 'ARTIFACTS_DIR'),
    chromium: process.env.CHROMIUM || '/usr/bin/chromium',
  };
}

function loadPlaywright() {
  const require = createRequire(import.meta.url);
  try {
    return require('playwright-core');
  } catch (e) {
    fail(
      `cannot load playwright-core (${e.code ?? e.message}); NODE_PATH=${process.env.NODE_PATH ?? ''}: ` +
        'run the browser test through tests/run, which installs it',
    );
  }
}

async function main() {
  const opts = options();
  const { chromium } = loadPlaywright();
  mkdirSync(opts.artifacts, { recursive: true });
  const saw = { mail: {}, password_page: {}, result: {}, screenshots: [] };
  let current = null; // the page to screenshot if something fails
  let step = 'launching Chromium';

  const shot = async (page, name) => {
    const path = join(opts.artifacts, name);
    await page.screenshot({ path, fullPage: true, timeout: WAIT_MS });
    saw.screenshots.push(path);
  };

  const browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: WAIT_MS,
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
    context.setDefaultTimeout(WAIT_MS);
    context.setDefaultNavigationTimeout(WAIT_MS);

    // 1. The mail, as MailDev's web UI shows it: the message view with its HTML preview.
    step = 'opening the mail in MailDev';
    const summary = await context.request.get(`${opts.maildev}/api/email/${opts.mailId}`);
    if (!summary.ok()) fail(`MailDev has no mail ${opts.mailId} (HTTP ${summary.status()})`);
    const mail = await summary.json();
    saw.mail.subject = mail.subject;
    saw.mail.to = (mail.to ?? []).map((t) => t.address);
    const expectedLink = (mail.text ?? '').split(/\s+/).find((w) => w.includes('/confirm?code='));
    if (!expectedLink) fail(`mail ${opts.mailId} has no /confirm?code= link in its text part`);

    const inbox = await context.newPage();
    current = inbox;
    saw.mail.url = `${opts.maildev}/#/email/${opts.mailId}`;
    await inbox.goto(saw.mail.url);
    step = 'waiting for the mail in MailDev';
    // Other tests' mails share the inbox and the subject: the recipient and the link are hers.
    await inbox.getByText(mail.subject, { exact: true }).first().waitFor();
    await inbox.getByText(saw.mail.to[0] ?? '(no recipient)').first().waitFor();
    const preview = inbox.frameLocator('iframe[title="Email HTML content"]');
    const button = preview.getByRole('link', { name: 'Create Password', exact: true });
    await button.waitFor({ state: 'visible' });
    saw.mail.link = await button.getAttribute('href');
    if (saw.mail.link !== expectedLink) {
      fail(`the preview's "Create Password" button links to ${saw.mail.link}, not to ${expectedLink}`);
    }
    await shot(inbox, '01-mail-in-maildev.png');

    // 2. She clicks "Create Password". In a mail client the link opens the page; MailDev's
    // preview is a sandboxed iframe (no popups, no top navigation), where the click can at most
    // navigate the iframe, which the password page refuses (frame-ancestors 'none'). So: take
    // a popup or an iframe that shows the page if the click gives one; otherwise click the same
    // button in MailDev's own rendering of the mail's HTML (/api/email/<id>/html) as a page.
    step = 'clicking "Create Password" in the MailDev preview';
    let answer = 'no answer';
    inbox.on('response', (r) => {
      if (r.url() !== expectedLink) return;
      const h = r.headers();
      answer = `HTTP ${r.status()}, x-frame-options ${h['x-frame-options'] ?? '(none)'}, frame-ancestors ${
        /frame-ancestors ([^;]*)/.exec(h['content-security-policy'] ?? '')?.[1] ?? '(none)'
      }`;
    });
    inbox.on('requestfailed', (r) => {
      if (r.url() === expectedLink) answer = `request failed: ${r.failure()?.errorText}`;
    });
    const popup = context.waitForEvent('page', { timeout: 5_000 }).catch(() => null);
    await button.click();
    let passwordPage = await popup;
    if (passwordPage) {
      saw.password_page.opened_as = 'new tab from the MailDev preview';
    } else {
      const frames = inbox.frames().filter((f) => f !== inbox.mainFrame());
      let inFrame = null;
      for (const f of frames) {
        if ((await f.locator('#password').count().catch(() => 0)) > 0) inFrame = f;
      }
      saw.mail.preview_click = `no new tab; the link's answer: ${answer}; the preview iframe shows ${
        inFrame ? 'the password page' : frames.map((f) => f.url()).join(' | ') || '(no frame)'
      }`;
      await shot(inbox, '02-maildev-preview-after-click.png');
    }
    if (!passwordPage) {
      step = "clicking \"Create Password\" in MailDev's rendering of the mail's HTML";
      const rendered = await context.newPage();
      current = rendered;
      saw.mail.rendered_url = `${opts.maildev}/api/email/${opts.mailId}/html`;
      await rendered.goto(saw.mail.rendered_url);
      const link = rendered.getByRole('link', { name: 'Create Password', exact: true });
      await link.waitFor({ state: 'visible' });
      if ((await link.getAttribute('href')) !== expectedLink) {
        fail(`the rendered mail's "Create Password" button does not link to ${expectedLink}`);
      }
      // Listen before clicking: a failed navigation rejects while the click is in progress.
      const opened = context
        .waitForEvent('page', { timeout: WAIT_MS })
        .then((p) => ((saw.password_page.opened_as = 'new tab'), p));
      const navigated = rendered
        .waitForURL(/\/confirm\?code=/, { timeout: WAIT_MS })
        .then(() => ((saw.password_page.opened_as = 'same tab'), rendered));
      const next = Promise.race([opened, navigated]);
      for (const p of [opened, navigated, next]) p.catch(() => {});
      await link.click();
      passwordPage = await next;
    }
    current = passwordPage;

    // 3. The password page: it asks for the password twice and states the rules.
    step = 'waiting for the password page';
    await passwordPage.waitForLoadState('load');
    saw.password_page.url = passwordPage.url();
    const heading = passwordPage.getByRole('heading', { level: 1 });
    await heading.waitFor();
    saw.password_page.heading = (await heading.innerText()).trim();
    const newPassword = passwordPage.getByLabel('New password', { exact: true });
    const confirmPassword = passwordPage.getByLabel('Confirm password', { exact: true });
    await newPassword.waitFor({ state: 'visible' });
    await confirmPassword.waitFor({ state: 'visible' });
    const rules = passwordPage.locator('#rules li');
    await rules.first().waitFor({ state: 'visible' });
    saw.password_page.rules = (await rules.allInnerTexts()).map((r) => r.trim());
    if (!saw.password_page.rules.some((r) => /at least \d+/i.test(r))) {
      fail(`the page does not state the minimum length; rules shown: ${JSON.stringify(saw.password_page.rules)}`);
    }
    await shot(passwordPage, '03-password-page.png');

    // 4. She types her password twice and submits.
    step = 'typing the password and submitting';
    await newPassword.fill(opts.password);
    await confirmPassword.fill(opts.password);
    await passwordPage.getByRole('button', { name: 'Submit', exact: true }).click();

    // 5. The page says her account is active.
    step = 'waiting for "Your account is active"';
    const done = passwordPage.getByRole('heading', { name: 'Your account is active' });
    try {
      await done.waitFor({ state: 'visible' });
    } catch (e) {
      const shown = await passwordPage.getByRole('alert').allInnerTexts().catch(() => []);
      fail(`no "Your account is active" heading after submitting${shown.length ? `; the page says: ${shown.join(' / ')}` : ''}`);
    }
    saw.result.url = passwordPage.url();
    saw.result.heading = (await passwordPage.getByRole('heading', { level: 1 }).innerText()).trim();
    await shot(passwordPage, '04-account-active.png');

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
  process.stderr.write(`create-password: gave up after ${OVERALL_MS / 1000} s\n`);
  process.exit(2);
}, OVERALL_MS);
watchdog.unref();

main().then(
  () => process.exit(0),
  (e) => {
    const detail = e.plain || !e.stack ? '' : `\n${e.stack.split('\n').slice(1).join('\n')}`;
    process.stderr.write(`create-password: ${e.message ?? e}${detail}\n`);
    process.exit(1);
  },
);
