// A stand-in for Stripe.js (v3), served by the test gateway at /v3/. It offers what the portal's
// card form uses: Stripe(key), stripe.elements().create("card").mount(selector) and
// stripe.confirmCardSetup(clientSecret, {payment_method: {card}}). Like the real one, it sends
// the card from the browser straight to the gateway (POST /v1/setup_intents/{id}/confirm with the
// publishable key and the client secret, form-encoded, answered with CORS headers), so the page's
// own server never sees a card number. The real card field is an iframe; this one is three plain
// inputs without names, so a form around them never submits them.
(function () {
  "use strict";
  var api = new URL(document.currentScript.src).origin;

  function CardElement() { this.inputs = null; }
  CardElement.prototype.mount = function (target) {
    var root = typeof target === "string" ? document.querySelector(target) : target;
    function field(kind, placeholder) {
      var input = document.createElement("input");
      input.setAttribute("data-stripe", kind);
      input.setAttribute("autocomplete", "off");
      input.setAttribute("inputmode", "numeric");
      input.placeholder = placeholder;
      root.appendChild(input);
      return input;
    }
    this.inputs = {
      number: field("cardnumber", "Card number"),
      exp: field("exp-date", "MM / YY"),
      cvc: field("cvc", "CVC")
    };
  };

  function Stripe(key) {
    if (!(this instanceof Stripe)) { return new Stripe(key); }
    this.key = key;
  }
  Stripe.prototype.elements = function () {
    return { create: function () { return new CardElement(); } };
  };
  Stripe.prototype.confirmCardSetup = function (clientSecret, data) {
    var card = data.payment_method.card.inputs;
    var id = clientSecret.split("_secret_")[0];
    var exp = card.exp.value.split("/");
    var body = new URLSearchParams();
    body.set("key", this.key);
    body.set("client_secret", clientSecret);
    body.set("payment_method_data[type]", "card");
    body.set("payment_method_data[card][number]", card.number.value.replace(/\s+/g, ""));
    body.set("payment_method_data[card][exp_month]", (exp[0] || "").trim());
    body.set("payment_method_data[card][exp_year]", (exp[1] || "").trim());
    body.set("payment_method_data[card][cvc]", card.cvc.value);
    return fetch(api + "/v1/setup_intents/" + encodeURIComponent(id) + "/confirm", {
      method: "POST",
      body: body
    }).then(function (response) {
      return response.json().then(function (json) {
        return response.ok ? { setupIntent: json } : { error: json.error };
      });
    }, function (e) {
      return { error: { message: String(e) } };
    });
  };
  window.Stripe = Stripe;
})();
