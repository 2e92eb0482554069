// The sign-in form: posted by script so a refused token is said on the page;
// without script the form posts itself and the server redirects.
'use strict';
document.getElementById('login').addEventListener('submit', async (event) => {
  event.preventDefault();
  const error = document.getElementById('error');
  error.hidden = true;
  const body = new URLSearchParams({ token: document.getElementById('token').value });
  try {
    const res = await fetch('/ui/login', { method: 'POST', body, credentials: 'same-origin' });
    if (res.ok) {
      location.assign('/ui/');
      return;
    }
    let detail = res.statusText;
    try { detail = (await res.json()).detail || detail; } catch (_) { /* not a problem body */ }
    error.textContent = detail;
  } catch (e) {
    error.textContent = 'The server cannot be reached: ' + e.message;
  }
  error.hidden = false;
});
