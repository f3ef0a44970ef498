// Starts Swagger UI on /openapi.json; a file of its own, since the page allows no inline script.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.openapi,
    dom_id: "#swagger-ui",
    validatorUrl: null, // the public validator is another origin
    deepLinking: true,
    layout: "BaseLayout",
  });
});
