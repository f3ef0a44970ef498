// Starts ReDoc on /openapi.json with the page's nonce, which its injected <style> elements carry.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("redoc");
  window.Redoc.init(root.dataset.openapi, { nonce: root.dataset.nonce }, root);
});
