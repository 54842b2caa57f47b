// /docs: Swagger UI over the generated /openapi.json (served from static/vendor: works offline).
window.addEventListener("load", function () {
  "use strict";
  window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null, // never ask an outside validator
    tryItOutEnabled: true,
  });
});
